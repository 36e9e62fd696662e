//! A node's durable state and every operation that changes it.
//!
//! One type serves all roles: a message accepted from the local agency API, the
//! parent or a child goes through [`NodeState::accept_batch`], which checks who may
//! send it, deduplicates it permanently by (from, doc_id), checks it against what
//! this node knows (a recall names a document its sender sent; a status comes from
//! a recipient), routes each recipient to the local inbox, a child's queue or the
//! parent's queue, and writes all of that, with its audit entries, in one atomic
//! batch. Callers acknowledge only after [`NodeState::durable`].

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex, MutexGuard, RwLock,
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
    },
};

use prost::Message;
use rustls::pki_types::UnixTime;
use tokio::sync::broadcast;
use tonic::Code;
use truc_core::{
    BusinessType, DeliveryState, Destination, DocId, Kind, NodeId, OrganId, ReceiptType,
    RouteError, RoutingTable, StatusCode,
};
use truc_pki::sign::{SignatureCounter, Signer};
use truc_proto::v1 as pb;
use truc_store::{
    Batch, BlobStore, Digest, GroupCommit, Space, Store, Ticket,
    keys::{Key, str_parts, trailing_u64},
    record::{self, DeadEntry, DocRecord, InboxEntry, QueueEntry, RecipientRecord, SentRecord},
};

use crate::{
    audit,
    config::{DeliverySection, Limits, QuotaSection, TestHooks},
    directory::Directory,
    envelope::{self, ReceiptSpec, Sender, Verified, Verifiers},
    error::{NodeError, Refusal},
};

/// Where a message entered this node from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The agency API of this node (or a receipt or status this node made).
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

/// What `accept` did with one message.
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

/// The fate of one message of a batch.
#[derive(Debug, Clone)]
pub enum Verdict {
    Stored,
    Duplicate,
    /// Refused for good.
    Refused(Refusal),
    /// Not taken now (a quota is full); the sender keeps it and retries later.
    Deferred(String),
}

/// Something that happened, for live views (demo, tests, later the event stream).
#[derive(Debug, Clone)]
pub enum Event {
    Delivered {
        organ: OrganId,
        from: OrganId,
        doc_id: DocId,
        subject: String,
        /// Whether it has PDF attachments, whose signatures are checked.
        pdfs: bool,
        /// New, or a revoke/update/replace of `target` (the header's).
        business_type: i32,
        target: String,
    },
    /// A recipient's delivery state of a document `organ` sent.
    StateChanged {
        organ: String,
        doc_id: DocId,
        recipient: OrganId,
        state: DeliveryState,
    },
    /// A business status about a document `organ` sent.
    Status {
        organ: String,
        doc_id: DocId,
        recipient: OrganId,
        code: StatusCode,
    },
    /// A status package arrived for `organ` (it is in its inbox).
    StatusArrived {
        organ: OrganId,
        from: OrganId,
        doc_id: DocId,
        code: StatusCode,
        for_doc_id: DocId,
    },
}

/// Counters for metrics and the demo.
#[derive(Debug, Default)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub refused: AtomicU64,
    pub deferred: AtomicU64,
    pub delivered: AtomicU64,
    pub receipts: AtomicU64,
    pub parked: AtomicU64,
    /// Attachment bytes streamed to peers, and how many of them were sent before.
    pub stream_bytes_sent: AtomicU64,
    pub stream_bytes_resent: AtomicU64,
    /// Attachment bytes received in streams.
    pub stream_bytes_received: AtomicU64,
    pub streams_resumed: AtomicU64,
    /// edXML packages refused at import (malformed, hostile, over a limit).
    pub edxml_refused: AtomicU64,
    /// Retention: documents whose attachments were released, whose envelopes
    /// were removed, whose removal waits for an export; audit entries pruned.
    pub retention_released: AtomicU64,
    pub retention_envelopes_removed: AtomicU64,
    pub retention_deferred: AtomicU64,
    pub audit_entries_pruned: AtomicU64,
}

/// Who writes the partial copy of an attachment now.
pub enum Claim {
    /// This caller: write it, then call [`PartialGuard::done`].
    Mine(PartialGuard),
    /// Someone else: wait for the outcome, then look again.
    Busy(tokio::sync::watch::Receiver<Option<bool>>),
}

/// Held while one task writes a partial attachment; tells waiters how it ended.
pub struct PartialGuard {
    digest: Digest,
    tx: tokio::sync::watch::Sender<Option<bool>>,
    owner: Arc<Mutex<HashMap<Digest, tokio::sync::watch::Receiver<Option<bool>>>>>,
    ok: bool,
}

impl PartialGuard {
    pub fn done(mut self) {
        self.ok = true;
    }
}

impl Drop for PartialGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.owner.lock() {
            m.remove(&self.digest);
        }
        let _ = self.tx.send(Some(self.ok));
    }
}

/// One upload's turn: the stream receiving it holds `turn`; each stream that
/// asks for it counts in `asked`, which tells the holder to let go.
#[derive(Default)]
pub struct UploadSlot {
    turn: Arc<tokio::sync::Mutex<()>>,
    asked: tokio::sync::watch::Sender<u64>,
}

/// The one stream receiving an upload; released when dropped.
pub struct UploadClaim {
    id: uuid::Uuid,
    slot: Arc<UploadSlot>,
    mine: u64,
    owner: Arc<Mutex<HashMap<uuid::Uuid, Arc<UploadSlot>>>>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl UploadClaim {
    /// Resolves once a newer stream asks for the same upload (the client's
    /// retry after a connection that died without a word): let go then.
    pub async fn taken_over(&self) {
        let mut asked = self.slot.asked.subscribe();
        let _ = asked.wait_for(|n| *n > self.mine).await;
    }
}

impl Drop for UploadClaim {
    fn drop(&mut self) {
        let mut m = self.owner.lock().unwrap_or_else(|p| p.into_inner());
        // Nobody else holds or waits for it (the map's reference and this one).
        if Arc::strong_count(&self.slot) == 2 {
            m.remove(&self.id);
        }
    }
}

/// What an application's new document must have beyond the node's own
/// checks: a subject (an official document's trích yếu), and a due date, if
/// any, not already past (in Unix milliseconds: one in seconds is refused
/// too, as a date of 1970). Changes (recall, update, replace) carry their
/// target's subject by default; imported edXML packages keep their dates.
/// [`NodeState::submit`] applies it to a doc_id not seen before
/// (`Submission::api_checks`), so that a retry is answered as before.
pub(crate) fn check_send(
    business_type: i32,
    subject: &str,
    due_at_ms: i64,
    now_ms: i64,
) -> Result<(), Refusal> {
    if business_type == BusinessType::New as i32 && subject.trim().is_empty() {
        return Err(Refusal::invalid(
            "subject is empty: an official document has one (its trích yếu)",
        ));
    }
    // A minute of slack for the clocks of the application and the edge.
    if due_at_ms != 0 && due_at_ms < now_ms - 60_000 {
        return Err(Refusal::invalid(format!(
            "due_at_ms {due_at_ms} is in the past ({} in Vietnam): Unix time in milliseconds, or 0 for none",
            crate::edxml::timestamp(due_at_ms)
        )));
    }
    Ok(())
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
    pub attachments: Vec<SubmittedAttachment>,
    pub doc_id: Option<String>,
    pub business_type: i32,
    pub target_doc_id: String,
    pub reason: String,
    /// Update: (organ, added).
    pub changes: Vec<(String, bool)>,
    /// Extra header fields (an imported edXML package's).
    pub meta: BTreeMap<String, String>,
    /// An application's Send: a new doc_id also passes
    /// [`check_send`] (a retry is answered as before).
    pub api_checks: bool,
}

/// One attachment of a submission: its bytes, or an upload already on this edge.
#[derive(Debug, Clone)]
pub struct SubmittedAttachment {
    pub name: String,
    pub content_type: String,
    pub body: Body,
}

#[derive(Debug, Clone)]
pub enum Body {
    Inline(Vec<u8>),
    /// Uploaded earlier (`Upload`), named by digest and size.
    Stored(Digest, u64),
}

/// A business status an application sends about a document.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub doc_id: String,
    pub from: String,
    pub organ: String,
    pub code: String,
    pub note: String,
    pub staff: String,
    pub meta: BTreeMap<String, String>,
}

struct Writer {
    seqs: HashMap<String, u64>,
    audit_seq: u64,
    audit_head: [u8; 32],
}

/// `Meta` key of the sequence `name` (queues, inboxes, agency events).
fn seq_key(name: &str) -> Vec<u8> {
    Key::new().str("seq").str(name).build()
}

/// A local message waiting for the writer, and where its verdict goes.
type LocalItem = (
    (Verified, Option<Vec<OrganId>>),
    std::sync::mpsc::Sender<Result<(Verdict, Ticket), NodeError>>,
);

/// Records a plan has changed, keyed as in the store, with what each change
/// replaced: one item's changes are undone by replaying that backwards, where
/// copying every map at every item cost a batch of n items n² record copies
/// (7% of a sending edge's CPU in a profile, BENCHMARKS.md).
struct Staged<K, V> {
    map: BTreeMap<K, V>,
    undo: Vec<(K, Option<V>)>,
}

impl<K, V> Default for Staged<K, V> {
    fn default() -> Self {
        Self {
            map: BTreeMap::new(),
            undo: Vec::new(),
        }
    }
}

impl<K: Ord + Clone, V> Staged<K, V> {
    fn insert(&mut self, key: K, value: V) {
        let old = self.map.insert(key.clone(), value);
        self.undo.push((key, old));
    }

    /// A point to [`undo_to`](Self::undo_to).
    fn mark(&self) -> usize {
        self.undo.len()
    }

    /// Undoes every change made since `mark`, newest first.
    fn undo_to(&mut self, mark: usize) {
        for (key, old) in self.undo.drain(mark..).rev() {
            match old {
                Some(v) => self.map.insert(key, v),
                None => self.map.remove(&key),
            };
        }
    }

    /// Everything changed, for writing; nothing is left to undo.
    fn take(&mut self) -> BTreeMap<K, V> {
        self.undo.clear();
        std::mem::take(&mut self.map)
    }
}

impl<K, V> std::ops::Deref for Staged<K, V> {
    type Target = BTreeMap<K, V>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

/// The count changes a plan makes, summed by key: a quota check reads a
/// key's sum (a lookup, where it scanned every change of the batch before:
/// quadratic in a batch of a window of transfers); undone with the plan.
#[derive(Default)]
struct Deltas(Staged<String, i64>);

impl Deltas {
    fn push(&mut self, (key, by): (String, i64)) {
        let sum = self.of(&key) + by;
        self.0.insert(key, sum);
    }

    fn extend(&mut self, changes: impl IntoIterator<Item = (String, i64)>) {
        for c in changes {
            self.push(c);
        }
    }

    fn of(&self, key: &str) -> i64 {
        self.0.get(key).copied().unwrap_or(0)
    }

    fn mark(&self) -> usize {
        self.0.mark()
    }

    fn undo_to(&mut self, mark: usize) {
        self.0.undo_to(mark);
    }

    /// Every key's sum, for applying; nothing is left to undo.
    fn take(&mut self) -> BTreeMap<String, i64> {
        self.0.take()
    }
}

/// Effects gathered while planning one atomic batch.
#[derive(Default)]
struct Plan {
    batch: Batch,
    sent: Staged<Vec<u8>, SentRecord>,
    inbox: Staged<Vec<u8>, InboxEntry>,
    queues: Vec<String>,
    events: Vec<Event>,
    /// Dedup entries written by this batch, not yet visible in the store.
    fresh: Vec<(Vec<u8>, [u8; 32])>,
    audit: Vec<audit::Draft>,
    deltas: Deltas,
    /// Blob reference counts and per-agency held bytes changed by this batch.
    refs: Staged<Digest, u64>,
    held: Staged<String, u64>,
    /// Stored documents changed by this batch (pending counts).
    docs: Staged<Vec<u8>, DocRecord>,
    /// (day, organ, "in"|"delivered") → (documents, bytes) to add.
    daily: BTreeMap<(String, String, &'static str), (u64, u64)>,
    /// Directory changes to apply once the batch is written.
    directory: Vec<(envelope::DirectoryFact, NodeId)>,
    /// Sequences this batch drew from, written once when it is applied.
    seqs: std::collections::BTreeSet<String>,
}

/// Where a plan stood before an item, to undo that item alone.
struct Mark {
    ops: usize,
    queues: usize,
    events: usize,
    fresh: usize,
    audit: usize,
    deltas: usize,
    sent: usize,
    inbox: usize,
    refs: usize,
    held: usize,
    docs: usize,
    directory: usize,
}

impl Plan {
    fn mark(&self) -> Mark {
        Mark {
            ops: self.batch.len(),
            queues: self.queues.len(),
            events: self.events.len(),
            fresh: self.fresh.len(),
            audit: self.audit.len(),
            deltas: self.deltas.mark(),
            sent: self.sent.mark(),
            inbox: self.inbox.mark(),
            refs: self.refs.mark(),
            held: self.held.mark(),
            docs: self.docs.mark(),
            directory: self.directory.len(),
        }
    }

    fn rollback(&mut self, m: Mark) {
        self.batch.truncate(m.ops);
        self.queues.truncate(m.queues);
        self.events.truncate(m.events);
        self.fresh.truncate(m.fresh);
        self.audit.truncate(m.audit);
        self.deltas.undo_to(m.deltas);
        self.sent.undo_to(m.sent);
        self.inbox.undo_to(m.inbox);
        self.refs.undo_to(m.refs);
        self.held.undo_to(m.held);
        self.docs.undo_to(m.docs);
        self.directory.truncate(m.directory);
    }

    fn audit(
        &mut self,
        event: impl Into<String>,
        doc_id: &str,
        from: &str,
        detail: impl Into<String>,
    ) {
        self.audit.push(audit::Draft {
            event: event.into(),
            doc_id: doc_id.to_owned(),
            from: from.to_owned(),
            detail: detail.into(),
        });
    }
}

enum Planned {
    Stored,
    Duplicate,
    /// Stored here before, and now taken for more of its recipients: these.
    Again(Vec<OrganId>),
}

/// An agency registered below this node at runtime, and the child it is reached by.
#[derive(Clone, PartialEq, prost::Message)]
struct Registration {
    #[prost(message, optional, tag = "1")]
    entry: Option<pb::AgencyEntry>,
    #[prost(string, tag = "2")]
    via: String,
}

/// Documents and bytes of one agency on one day at this node.
#[derive(Debug, Clone)]
pub struct DailyStat {
    pub day: String,
    pub organ: String,
    pub direction: String,
    pub documents: u64,
    pub bytes: u64,
}

/// Documents waiting at this node for one recipient agency.
#[derive(Debug, Clone)]
pub struct RecipientQueue {
    pub organ: String,
    pub depth: u64,
    /// Unix ms the oldest of them was queued (0 when not known).
    pub oldest_ms: i64,
}

/// A document past its delivery deadline for one recipient.
#[derive(Debug, Clone)]
pub struct Overdue {
    pub doc_id: String,
    pub from: String,
    pub recipient: String,
    pub priority: u32,
    pub deadline_ms: i64,
    /// Parked (waiting for an operator's requeue) or still queued.
    pub parked: bool,
    pub queue: String,
}

/// A transfer refused for good, kept until an operator requeues it (once
/// its cause is fixed).
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub queue: String,
    pub doc_id: String,
    pub from: String,
    pub recipients: Vec<String>,
    /// The gRPC code of the refusal, by name.
    pub code: String,
    pub reason: String,
    pub at_ms: i64,
}

/// What [`NodeState::requeue`] or [`NodeState::requeue_all`] did: queue
/// entries put back, and the held entries that could not be (or only in
/// part), as (doc_id, from, why).
#[derive(Debug, Default)]
pub struct Requeued {
    pub entries: usize,
    /// The first [`REQUEUE_REFUSED_SHOWN`] of them.
    pub refused: Vec<(String, String, String)>,
    pub refused_total: usize,
}

/// How many held entries that could not be requeued an answer names.
pub const REQUEUE_REFUSED_SHOWN: usize = 100;

impl Requeued {
    /// Counts a held entry that stays held (all of it, or the part that
    /// could not go), listing the first [`REQUEUE_REFUSED_SHOWN`].
    fn still_held(&mut self, doc_id: String, from: String, why: String) {
        self.refused_total += 1;
        if self.refused.len() < REQUEUE_REFUSED_SHOWN {
            self.refused.push((doc_id, from, why));
        }
    }
}

/// How many dead letters operators' pages and `truc queues` list: the
/// first by queue, oldest first on each (what has waited longest).
pub const DEAD_LETTERS_SHOWN: usize = 100;

/// The key of the dead letter count among the node's counts.
const DEAD_COUNT: &str = "dead";

/// The key of the parked entry count among the node's counts.
const PARKED_COUNT: &str = "parked";

/// The key of the count of parked entries for one recipient and priority.
fn parked_key(recipient: &str, priority: u32) -> String {
    format!("p:{recipient}\0{priority}")
}

/// What happened to a held entry, for the lines that tell what an operator
/// did with it: parked on its queue, refused there by the peer, or not sent
/// by this node (its reason says so and where).
fn held_was(space: Space, held_on: &str, here: bool, reason: &str) -> String {
    match space {
        Space::Parked => format!("parked on {held_on}"),
        _ if here => reason.to_owned(),
        _ => format!("refused on {held_on}: {reason}"),
    }
}

/// What parking (+1) or taking back (-1) `e` changes in the counts.
fn parked_deltas(e: &QueueEntry, by: i64) -> impl Iterator<Item = (String, i64)> + '_ {
    e.recipients
        .iter()
        .map(move |r| (parked_key(r, e.priority), by))
        .chain(std::iter::once((PARKED_COUNT.to_owned(), by)))
}

/// How many overdue documents operators' pages and `truc queues` list (the
/// earliest deadlines; an edge away for a weekend can leave tens of
/// thousands parked).
pub const OVERDUE_SHOWN: usize = 200;

#[derive(Debug, Clone, Default)]
pub struct QueueSnapshot {
    pub recipients: Vec<RecipientQueue>,
    /// Overdue documents per recipient, earliest deadline first: at most
    /// [`OVERDUE_SHOWN`].
    pub overdue: Vec<Overdue>,
    /// Every overdue document, counted by (recipient, priority, parked).
    pub overdue_counts: BTreeMap<(String, u32, bool), u64>,
    /// Dead letters (at most [`DEAD_LETTERS_SHOWN`]), and how many there
    /// are in all.
    pub dead: Vec<DeadLetter>,
    pub dead_total: u64,
    /// The first [`OVERDUE_SHOWN`] parked entries (by queue, oldest first
    /// on each), with their queue, as read for `overdue`.
    pub parked: Vec<(String, DeadEntry)>,
    /// The held entries of `parked` and `dead` whose records cannot be read
    /// (listed there with DATA_LOSS): their queue and the error.
    pub unreadable: Vec<String>,
}

impl QueueSnapshot {
    /// Every overdue document, queued or parked.
    pub fn overdue_total(&self) -> u64 {
        self.overdue_counts.values().sum()
    }
}

/// The node's state machine over its store.
/// Agency events per batch, waiting for the batch's flush.
type Undurable = VecDeque<(Ticket, Vec<pb::AgencyEvent>)>;

pub struct NodeState {
    pub node_id: NodeId,
    routes: RwLock<Arc<RoutingTable>>,
    signers: HashMap<OrganId, Arc<Signer>>,
    node_signer: Option<Arc<Signer>>,
    /// The node's own key, for the audit checkpoints of archival packages.
    checkpoint_signer: Option<Arc<Signer>>,
    /// Edges: how received PDF attachments' signatures are checked.
    pdf: Option<PdfCheck>,
    pub verifiers: Verifiers,
    /// Signatures this node's keys made and its verifiers checked.
    signatures: SignatureCounter,
    pub limits: Limits,
    pub delivery: DeliverySection,
    pub quotas: QuotaSection,
    pub hooks: TestHooks,
    commit: Arc<GroupCommit>,
    store: Arc<dyn Store>,
    pub blobs: BlobStore,
    writer: Mutex<Writer>,
    /// `q:<queue>` depth, `r:<organ>` and `s:<organ>` documents waiting in child
    /// queues per recipient and per sender, `u:<organ>:…` unacknowledged ones of
    /// a local agency. Changed only by the writer (its lock held, then this
    /// one), each batch's changes at once; read without the writer's lock, so
    /// that metrics, heartbeats and sweeps do not wait for a write that hangs.
    /// Such a reader may find the store one batch ahead (the batch being
    /// applied, visible before its counts change).
    counts: Mutex<HashMap<String, i64>>,
    /// Operators' reads given up on by their caller and still running
    /// ([`Self::read_within`]): a store that hangs holds each.
    abandoned_reads: std::sync::atomic::AtomicUsize,
    /// Local messages waiting to be accepted together (see `accept`).
    local: Mutex<Vec<LocalItem>>,
    /// Per queue, a count bumped by every write that adds to it: each sender
    /// on that queue sees it move (two during a session's replacement).
    notifiers: Mutex<HashMap<String, tokio::sync::watch::Sender<u64>>>,
    events: broadcast::Sender<Event>,
    /// Durable agency events as they are written (the live part of `Events`).
    agency_events: broadcast::Sender<pb::AgencyEvent>,
    /// Agency events written but not yet durable, in id order: an application
    /// hears of an event only once it survives a crash, so an id it was told is
    /// never reused for another event.
    undurable_events: Arc<Mutex<Undurable>>,
    /// The highest event id announced (all below it are durable too).
    durable_event_id: Arc<AtomicU64>,
    pub stats: Stats,
    /// Metrics, peer facts, children's reports, throughput samples.
    pub telemetry: crate::telemetry::Telemetry,
    /// This node's agencies and what is registered below it (config + changes).
    own_directory: RwLock<Directory>,
    /// The last directory the parent sent.
    received_directory: RwLock<Option<Directory>>,
    /// What this node routes and checks by, and sends its children. Shared,
    /// not copied, by every reader (each send checks its recipients in it).
    directory: RwLock<Arc<Directory>>,
    /// Bumped on every directory change, for the children's links.
    directory_changed: tokio::sync::watch::Sender<u64>,
    /// The subtree this node may register agencies in (relays).
    grant: Option<OrganId>,
    /// The subtrees each child may register agencies in.
    child_grants: HashMap<NodeId, OrganId>,
    /// Last frame heard from each peer (Unix ms).
    last_seen: Mutex<HashMap<NodeId, i64>>,
    parent: Option<NodeId>,
    connected: Mutex<BTreeSet<NodeId>>,
    /// The earliest deadline a document's own due date made shorter than
    /// its priority's (0: not known, scan every queue fully next time, as
    /// after a disconnect or a directory change). The deadline sweep stops
    /// early in a queue only before it.
    next_short_deadline: AtomicI64,
    pub storage: crate::config::StorageSection,
    partials: Arc<Mutex<HashMap<Digest, tokio::sync::watch::Receiver<Option<bool>>>>>,
    /// Queue entries that could not be read, with when that began and when
    /// it last happened: tried again until [`READ_RETRY_MS`], then given up on.
    read_failures: Mutex<HashMap<(String, u64), (i64, i64)>>,
    /// How many `read_failures` holds, read without its lock.
    read_failing: AtomicUsize,
    /// [`READ_RETRY_MS`]; shorter in tests.
    read_retry_ms: AtomicI64,
    /// Uploads being received, one stream at a time each.
    uploading: Arc<Mutex<HashMap<uuid::Uuid, Arc<UploadSlot>>>>,
    /// Highest offset streamed so far per attachment, to count re-sent bytes.
    stream_hwm: Mutex<HashMap<Digest, u64>>,
}

impl std::fmt::Debug for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeState")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// What a document holds until its retention ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Attachments,
    Envelope,
}

impl Held {
    fn label(self) -> &'static str {
        match self {
            Held::Attachments => "attachments",
            Held::Envelope => "envelope",
        }
    }

    /// Ends a key about a document: an envelope's keys carry a last part, the
    /// attachments' keep the shape they had before envelopes had a retention.
    fn finish_key(self, k: Key) -> Vec<u8> {
        match self {
            Held::Attachments => k.build(),
            Held::Envelope => k.str(self.label()).build(),
        }
    }
}

/// Release schedule key: due time, then the document (and what is due).
fn release_key(due_ms: i64, from: &str, doc_id: &str, what: Held) -> Vec<u8> {
    what.finish_key(Key::new().u64(due_ms.max(0) as u64).str(from).str(doc_id))
}

/// The Vietnam (UTC+7) date of a Unix ms time, `YYYY-MM-DD`.
pub fn day_of(ms: i64) -> String {
    crate::edxml::timestamp(ms)[..10].replace('/', "-")
}

/// A message kind as metrics and logs name it.
pub fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Document => "document",
        Kind::Status => "status",
        Kind::Receipt => "receipt",
        Kind::Directory => "directory",
    }
}

/// The kind of a queue entry (`pb::Kind` as i32) as metrics name it.
fn pb_kind_name(k: i32) -> &'static str {
    match pb::Kind::try_from(k) {
        Ok(pb::Kind::Document) => "document",
        Ok(pb::Kind::Status) => "status",
        Ok(pb::Kind::Receipt) => "receipt",
        Ok(pb::Kind::Directory) => "directory",
        _ => "unknown",
    }
}

/// Shift of this process's clock (test hook `clock_offset_ms`).
static CLOCK_OFFSET_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Shifts [`now_ms`] for this process (fault injection: clock skew).
pub fn set_clock_offset_ms(ms: i64) {
    CLOCK_OFFSET_MS.store(ms, Ordering::Relaxed);
}

/// Unix ms as this node tells time.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
        + CLOCK_OFFSET_MS.load(Ordering::Relaxed)
}

pub(crate) fn doc_key(from: &str, doc_id: &str) -> Vec<u8> {
    Key::new().str(from).str(doc_id).build()
}

/// `(from, doc_id)` of a [`doc_key`] (empty parts when it is not one).
fn split_doc_key(key: &[u8]) -> (String, String) {
    match str_parts(key, 2) {
        Some(mut p) => {
            let doc_id = p.pop().unwrap_or_default();
            (p.pop().unwrap_or_default(), doc_id)
        }
        None => Default::default(),
    }
}

fn sent_key(doc_id: &str, from: &str) -> Vec<u8> {
    Key::new().str(doc_id).str(from).build()
}

fn sent_index_key(from: &str, created_ms: i64, doc_id: &str) -> Vec<u8> {
    // Newest first: the scan goes in key order.
    Key::new()
        .str(from)
        .u64(u64::MAX - created_ms.max(0) as u64)
        .str(doc_id)
        .build()
}

fn inbox_index_key(doc_id: &str, from: &str, organ: &str) -> Vec<u8> {
    Key::new().str(doc_id).str(from).str(organ).build()
}

/// `InboxIndex`: a status in `organ`'s inbox (entry `seq`) about `for_doc_id`.
/// (Its first part cannot be a doc_id, so it never mixes with `inbox_index_key`.)
fn status_index_key(for_doc_id: &str, organ: &str, seq: u64) -> Vec<u8> {
    Key::new()
        .str(STATUS_INDEX)
        .str(for_doc_id)
        .str(organ)
        .u64(seq)
        .build()
}

const STATUS_INDEX: &str = "~status";

/// How long a queue entry that cannot be read is tried again (each session,
/// after the reconnect backoff) before it is dead-lettered with its sender
/// told: a read error that lasts is a bad sector, not a passing fault.
pub const READ_RETRY_MS: i64 = 10 * 60_000;

/// `Meta`: set once every status in the inbox has its `status_index_key`.
fn status_index_marker() -> Vec<u8> {
    Key::new().str("index").str(STATUS_INDEX).build()
}

fn queue_prefix(queue: &str) -> Vec<u8> {
    Key::new().str(queue).build()
}

/// The shortest delivery deadline of any priority, in ms.
fn shortest_deadline(d: &DeliverySection) -> i64 {
    d.deadline_ms.iter().copied().min().unwrap_or(0) as i64
}

/// Whether an entry's deadline (a due date) is shorter than every
/// priority's, `min_deadline` (fixed for a process's life, so an entry is
/// counted and uncounted alike): a queue holding one is read to its end for
/// overdue entries.
fn short_deadline(e: &QueueEntry, min_deadline: i64) -> bool {
    e.deadline_ms != 0 && e.deadline_ms < e.enqueued_at_ms + min_deadline
}

/// The queue a `(queue, seq)` key (queued, parked, dead) names.
fn queue_of(key: &[u8]) -> Option<String> {
    str_parts(key, 1).and_then(|mut q| q.pop())
}

fn change_key(from: &str, target: &str, business: BusinessType) -> Vec<u8> {
    Key::new()
        .str(from)
        .str(target)
        .str(business.as_str())
        .build()
}

fn internal(e: impl std::fmt::Display) -> NodeError {
    NodeError::Other(e.to_string())
}

fn state_of(r: &RecipientRecord) -> DeliveryState {
    DeliveryState::from_u8(r.state as u8).unwrap_or(DeliveryState::Queued)
}

/// The parts of NodeState that `new` takes.
pub struct Parts {
    pub node_id: NodeId,
    pub routing: RoutingTable,
    pub signers: Vec<Signer>,
    pub node_signer: Option<Signer>,
    /// The node's transport key for audit checkpoints when `node_signer` is
    /// None (hubs and relays sign them with `node_signer`; neither: no archives).
    pub checkpoint_signer: Option<Signer>,
    /// Edges: PDF signature checks (None: off).
    pub pdf: Option<PdfCheck>,
    pub verifiers: Verifiers,
    pub limits: Limits,
    pub delivery: DeliverySection,
    pub quotas: QuotaSection,
    pub hooks: TestHooks,
    pub store: Arc<dyn Store>,
    pub blobs: BlobStore,
    pub directory: Directory,
    pub storage: crate::config::StorageSection,
    pub grant: Option<OrganId>,
    pub child_grants: HashMap<NodeId, OrganId>,
    pub parent: Option<NodeId>,
}

/// Why the store takes no writes now (health NOT_SERVING, a `store` alert).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unwritable {
    /// A flush failed: writes are refused until restart.
    FlushFailed,
    /// A store request hangs (the store's own words).
    Hangs(String),
    /// A flush has not finished for this long.
    FlushHangs(std::time::Duration),
    /// Free space is below `storage.min_free_bytes`.
    LowSpace,
    /// Free space cannot be read.
    SpaceUnknown(String),
    /// The check itself could not run.
    Unchecked(String),
}

impl std::fmt::Display for Unwritable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::FlushFailed => f.write_str("a store flush failed: writes refused until restart"),
            Self::Hangs(why) => write!(f, "{why}: nothing is acknowledged until it answers"),
            Self::FlushHangs(d) => write!(
                f,
                "a store flush has not finished for {} s (the disk hangs?): nothing is acknowledged until it does",
                d.as_secs()
            ),
            Self::LowSpace => {
                f.write_str("free space below storage.min_free_bytes: intake refused")
            }
            Self::SpaceUnknown(e) => write!(f, "free space cannot be read: {e}"),
            Self::Unchecked(e) => {
                write!(f, "whether the store takes writes cannot be checked: {e}")
            }
        }
    }
}

impl Unwritable {
    /// The same reason, whatever its figures (how long a flush hangs).
    pub fn same_kind(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// How long an issuer that could not be checked for want of a revocation
/// list stays an alert after the last time (10 min).
const UNLISTED_ALERT_SECS: u64 = 600;

/// What a revocation list past its next update stops (`which`: tls, signing).
pub fn crl_stale_effect(which: &str) -> &'static str {
    if which == "signing" {
        "documents signed under the certificates it covers are deferred (their senders keep them and retry)"
    } else {
        "every connection it covers is refused"
    }
}

/// Refuses a transfer that asks a hop to serve a recipient the sender did not
/// sign for.
fn in_signed_list(v: &Verified, to: &[OrganId]) -> Result<(), NodeError> {
    match to.iter().find(|r| !v.to.contains(r)) {
        Some(extra) => Err(Refusal::invalid(format!(
            "recipient {extra} is not in the signed recipient list"
        ))
        .into()),
        None => Ok(()),
    }
}

/// Refuses inbox entries of one doc_id from several senders, when the caller
/// named none: which sender's document is meant cannot be told (each sender
/// picks its own doc_ids).
fn one_sender<'a>(
    doc_id: &DocId,
    entries: impl Iterator<Item = &'a InboxEntry>,
) -> Result<(), NodeError> {
    let mut senders: Vec<&str> = entries.map(|e| e.from.as_str()).collect();
    senders.sort_unstable();
    senders.dedup();
    if senders.len() > 1 {
        return Err(Refusal::new(
            Code::FailedPrecondition,
            format!(
                "several agencies sent a document {doc_id} here ({}): name the sender (`from`; --from, ?from=)",
                senders.join(", ")
            ),
        )
        .into());
    }
    Ok(())
}

/// The longest free-text field (role, link, version) kept of a child's report.
pub const REPORT_TEXT: usize = 64;

/// How long a store flush may run before the node reports NOT_SERVING.
pub const STALL_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Agency events kept for live readers: one that falls further behind reads
/// the rest from the store (small in tests, to make that happen).
const AGENCY_EVENTS_LIVE: usize = if cfg!(test) { 128 } else { 4096 };

/// How long a page or a scrape waits for what it reads from the store (the
/// queues) before it answers without it: a store that hangs is known only
/// after [`STALL_AFTER`]. Below Prometheus' default scrape timeout (10 s).
pub const READ_WAIT: std::time::Duration = std::time::Duration::from_secs(4);

/// Operators' reads left running once their caller gave up on them, at most:
/// beyond, a page or a scrape answers at once without what the store holds.
const ABANDONED_READS_MAX: usize = 4;

impl NodeState {
    /// Opens the state: reads counters and the audit head back from the store.
    pub fn new(p: Parts) -> Result<Arc<Self>, NodeError> {
        let (events, _) = broadcast::channel(4096);
        let (audit_seq, audit_head) = audit::append_point(p.store.as_ref())?;
        let mut counts: HashMap<String, i64> = HashMap::new();
        let min_deadline = shortest_deadline(&p.delivery);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let rows = p.store.scan(Space::Queue, &[], after.as_deref(), 4096)?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.clone());
            for (k, v) in rows {
                let queue = queue_of(&k).unwrap_or_default();
                *counts.entry(format!("q:{queue}")).or_default() += 1;
                // Only entries towards children carry deadlines (and are
                // counted by sender and recipient): the others are not read.
                if queue.starts_with("child:") {
                    let e: QueueEntry = record::decode(Space::Queue, &k, &v)?;
                    if short_deadline(&e, min_deadline) {
                        *counts.entry(format!("d:{queue}")).or_default() += 1;
                    }
                    *counts.entry(format!("s:{}", e.from)).or_default() += 1;
                    for r in &e.recipients {
                        *counts.entry(format!("r:{r}")).or_default() += 1;
                    }
                }
            }
        }
        // Parked entries and dead letters, for operators' pages and scrapes
        // without a scan of them all.
        for space in [Space::Parked, Space::Dead] {
            let mut after: Option<Vec<u8>> = None;
            loop {
                let rows = p.store.scan(space, &[], after.as_deref(), 4096)?;
                let Some((last, _)) = rows.last() else { break };
                after = Some(last.clone());
                for (k, v) in rows {
                    if space == Space::Dead {
                        *counts.entry(DEAD_COUNT.to_owned()).or_default() += 1;
                        continue;
                    }
                    // Unreadable: counted as one entry (discard --all drops it).
                    match record::decode::<DeadEntry>(space, &k, &v).map(|d| d.entry) {
                        Ok(Some(e)) => {
                            for (key, n) in parked_deltas(&e, 1) {
                                *counts.entry(key).or_default() += n;
                            }
                        }
                        _ => *counts.entry(PARKED_COUNT.to_owned()).or_default() += 1,
                    }
                }
            }
        }
        // Unacknowledged inbox entries per agency and kind (today's count operations).
        // A store from before the status index gets it on the same pass.
        let indexed = p.store.get(Space::Meta, &status_index_marker())?.is_some();
        let mut backfill = Batch::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let rows = p.store.scan(Space::Inbox, &[], after.as_deref(), 4096)?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.clone());
            for (k, v) in rows {
                let e: InboxEntry = record::decode(Space::Inbox, &k, &v)?;
                if !e.acked {
                    *counts
                        .entry(format!("u:{}:{}", e.organ, e.kind))
                        .or_default() += 1;
                }
                if !indexed
                    && e.kind == "status"
                    && !e.for_doc_id.is_empty()
                    && let Some(seq) = trailing_u64(&k)
                {
                    backfill.put(
                        Space::InboxIndex,
                        status_index_key(&e.for_doc_id, &e.organ, seq),
                        Vec::new(),
                    );
                }
            }
        }
        if !indexed {
            backfill.put(Space::Meta, status_index_marker(), Vec::new());
            p.store.apply(backfill)?;
            p.store.flush()?;
        }
        // The parent's last directory, complete or not: one of version 0 (from
        // a relay that has not met its own parent yet) still names agencies.
        let received = match p
            .store
            .get(Space::Meta, &Key::new().str("directory").build())?
        {
            Some(bytes) => match pb::Directory::decode(bytes.as_slice()) {
                Ok(d) => Some(Directory::from_pb(&d)),
                Err(e) => {
                    tracing::warn!(error = %e, "the stored directory from the parent cannot be read; left out until the parent sends it again");
                    None
                }
            },
            None => None,
        };
        // Agencies registered at runtime below this node (relays' delegated directory).
        let mut routing = p.routing;
        let mut own = p.directory;
        for (k, v) in p.store.scan(
            Space::Meta,
            &Key::new().str("reg").build(),
            None,
            usize::MAX,
        )? {
            let r: Registration = record::decode(Space::Meta, &k, &v)?;
            let Some(entry) = r.entry else { continue };
            let (Ok(organ), Ok(via)) = (entry.organ.parse::<OrganId>(), r.via.parse::<NodeId>())
            else {
                continue;
            };
            // The configuration decides which children there are and binds
            // its own agencies: a registration through a child no longer
            // configured, or for an agency the configuration places
            // elsewhere, would bring back what the operator took away.
            let bound = routing.child_of(&organ).cloned();
            if !routing.is_child(&via)
                || routing.is_local(&organ)
                || bound.as_ref().is_some_and(|b| b != &via)
            {
                tracing::warn!(
                    %organ, %via, ?bound,
                    "a stored registration names a child that is not configured, or an agency the configuration places elsewhere; left out"
                );
                continue;
            }
            routing.add_child_organ(organ.clone(), via);
            own.entries.insert(organ, entry);
        }
        // Every event found on disk at startup is durable.
        let stored_event_seq = p
            .store
            .get(Space::Meta, &seq_key("events"))?
            .and_then(|v| trailing_u64(&v))
            .unwrap_or(0);
        let directory = Self::merge_directories(routing.has_parent(), received.as_ref(), &own);
        let (directory_changed, _) = tokio::sync::watch::channel(directory.version);
        // Every key and verifier of this node counts into one counter: its
        // own figures, whatever else runs in the process.
        let signatures = SignatureCounter::default();
        let node_signer = p.node_signer.map(|s| Arc::new(s.counting(&signatures)));
        Ok(Arc::new(Self {
            node_id: p.node_id,
            routes: RwLock::new(Arc::new(routing)),
            signers: p
                .signers
                .into_iter()
                .filter_map(|s| {
                    let o = s.organ().cloned()?;
                    Some((o, Arc::new(s.counting(&signatures))))
                })
                .collect(),
            checkpoint_signer: p
                .checkpoint_signer
                .map(|s| Arc::new(s.counting(&signatures)))
                .or_else(|| node_signer.clone()),
            node_signer,
            pdf: p.pdf,
            verifiers: Verifiers {
                agencies: p.verifiers.agencies.counting(&signatures),
                nodes: p.verifiers.nodes.counting(&signatures),
            },
            signatures,
            limits: p.limits,
            delivery: p.delivery,
            quotas: p.quotas,
            hooks: p.hooks,
            // Records name blobs stored without a sync of their own
            // (`put_many_unsynced`): every flush syncs the packs first.
            commit: GroupCommit::start_after(p.store.clone(), p.blobs.pack_syncer()),
            store: p.store,
            blobs: p.blobs,
            writer: Mutex::new(Writer {
                seqs: HashMap::new(),
                audit_seq,
                audit_head,
            }),
            counts: Mutex::new(counts),
            abandoned_reads: Default::default(),
            local: Mutex::default(),
            notifiers: Mutex::default(),
            events,
            agency_events: broadcast::channel(AGENCY_EVENTS_LIVE).0,
            undurable_events: Arc::default(),
            durable_event_id: Arc::new(AtomicU64::new(stored_event_seq)),
            stats: Stats::default(),
            telemetry: crate::telemetry::Telemetry::default(),
            own_directory: RwLock::new(own),
            received_directory: RwLock::new(received),
            directory: RwLock::new(Arc::new(directory)),
            directory_changed,
            grant: p.grant,
            child_grants: p.child_grants,
            last_seen: Mutex::default(),
            parent: p.parent,
            connected: Mutex::default(),
            next_short_deadline: AtomicI64::new(0),
            storage: p.storage,
            partials: Arc::default(),
            read_failures: Mutex::default(),
            read_failing: AtomicUsize::new(0),
            read_retry_ms: AtomicI64::new(READ_RETRY_MS),
            uploading: Arc::default(),
            stream_hwm: Mutex::default(),
        }))
    }

    pub fn commit(&self) -> &Arc<GroupCommit> {
        &self.commit
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Live agency events (subscribe before reading the backlog, then skip ids seen).
    pub fn subscribe_agency(&self) -> broadcast::Receiver<pb::AgencyEvent> {
        self.agency_events.subscribe()
    }

    /// Kept agency events of `organ` after `after`, oldest first.
    pub fn agency_events_after(
        &self,
        organ: &OrganId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<pb::AgencyEvent>, NodeError> {
        // Events written but not yet durable are not told.
        let durable = self.durable_event_id.load(Ordering::SeqCst);
        let prefix = Key::new().str(organ.as_str()).build();
        let from = Key::new().str(organ.as_str()).u64(after).build();
        let mut out = Vec::new();
        for (_, v) in self
            .store
            .scan(Space::Events, &prefix, Some(&from), limit)?
        {
            let e = pb::AgencyEvent::decode(v.as_slice()).map_err(internal)?;
            if e.id > durable {
                break;
            }
            out.push(e);
        }
        Ok(out)
    }

    /// Meta: the document was exported as an archival package (value: the
    /// package's tag-manifest SHA-256).
    fn archived_key(from: &str, doc_id: &str) -> Vec<u8> {
        Key::new().str("archived").str(from).str(doc_id).build()
    }

    /// Meta: the retention of what it holds passed while it was not archived yet.
    fn deferred_key(from: &str, doc_id: &str, what: Held) -> Vec<u8> {
        what.finish_key(Key::new().str("retention-deferred").str(from).str(doc_id))
    }

    /// Records that a document was exported as an archival package (audited);
    /// attachments kept for that are released at the next sweep.
    pub fn mark_archived(
        &self,
        from: &str,
        doc_id: &str,
        package_sha256: &[u8],
    ) -> Result<(), NodeError> {
        let w = self.lock();
        let mut plan = Plan::default();
        if self.doc_record(&plan, &doc_key(from, doc_id))?.is_none() {
            return Err(Refusal::not_found(format!("no document {from}/{doc_id} here")).into());
        }
        plan.batch.put(
            Space::Meta,
            Self::archived_key(from, doc_id),
            package_sha256.to_vec(),
        );
        for what in [Held::Attachments, Held::Envelope] {
            let dkey = Self::deferred_key(from, doc_id, what);
            if self.store.get(Space::Meta, &dkey)?.is_some() {
                plan.batch.delete(Space::Meta, dkey);
                plan.batch.put(
                    Space::Release,
                    release_key(now_ms(), from, doc_id, what),
                    Vec::new(),
                );
            }
        }
        plan.audit(
            "archived",
            doc_id,
            from,
            format!(
                "exported as an archival package (tag manifest sha-256 {})",
                hex::encode(package_sha256)
            ),
        );
        let ticket = self.finish(w, plan)?;
        futures::executor::block_on(self.durable(ticket))?;
        Ok(())
    }

    fn original_key(from: &str, doc_id: &str) -> Vec<u8> {
        Key::new().str("edxml").str(from).str(doc_id).build()
    }

    /// Keeps the package a document was imported from, to hand it back unchanged;
    /// it goes with the document's attachments at the end of the retention period.
    /// Once, so that a retried import (the document a duplicate by then) keeps
    /// it if the first one could not.
    pub fn keep_original(
        &self,
        from: &OrganId,
        doc_id: &DocId,
        package: &[u8],
    ) -> Result<Ticket, NodeError> {
        let key = Self::original_key(from.as_str(), &doc_id.to_string());
        // Kept already, or released with the document's attachments (a late
        // re-import must not keep it again, for ever): nothing to write. The
        // current ticket covers a keep another import has just applied.
        let done = |s: &Self| -> Result<bool, NodeError> {
            // The record alone: its envelope is not needed to see a release.
            let doc = s.doc_record(
                &Plan::default(),
                &doc_key(from.as_str(), &doc_id.to_string()),
            )?;
            Ok(s.store.get(Space::Meta, &key)?.is_some()
                || doc.is_some_and(|d| d.released_at_ms != 0))
        };
        if done(self)? {
            return Ok(self.commit.current());
        }
        self.blobs
            .check_space(package.len() as u64, self.storage.min_free_bytes)?;
        let d = self.blobs.put(package)?;
        let w = self.lock();
        // Two imports of one package at once: the second keeps nothing more.
        if done(self)? {
            drop(w);
            return Ok(self.commit.current());
        }
        let mut plan = Plan::default();
        self.plan_ref(&mut plan, &d, "the edXML package")?;
        plan.batch.put(Space::Meta, key, d.0.to_vec());
        self.finish(w, plan)
    }

    /// The package a document sent from here was imported from.
    pub fn original(&self, from: &str, doc_id: &DocId) -> Result<Option<Vec<u8>>, NodeError> {
        match self
            .store
            .get(Space::Meta, &Self::original_key(from, &doc_id.to_string()))?
        {
            Some(v) => {
                let d = Digest::from_slice(&v).ok_or_else(|| internal("stored digest"))?;
                Ok(Some(self.blobs.read(&d)?))
            }
            None => Ok(None),
        }
    }

    /// Unacknowledged documents and statuses of a local agency.
    pub fn counts(&self, organ: &OrganId) -> (u64, u64) {
        let c = self.lock_counts();
        let get = |k: &str| {
            c.get(&format!("u:{organ}:{k}"))
                .copied()
                .unwrap_or(0)
                .max(0) as u64
        };
        (get("document"), get("status"))
    }

    /// The application could not process a received item: keep it unacknowledged,
    /// with the reason (today's `updateStatus fail`).
    pub fn nack(
        &self,
        doc_id: &DocId,
        from: Option<&OrganId>,
        organ: Option<&OrganId>,
        reason: &str,
    ) -> Result<(Vec<OrganId>, Ticket), NodeError> {
        let w = self.lock();
        let entries = self.answerable_entries(doc_id, from, organ)?;
        let mut plan = Plan::default();
        let mut out = Vec::new();
        let mut acked = Vec::new();
        for (key, mut e) in entries {
            if organ.is_some_and(|o| o.as_str() != e.organ) {
                continue;
            }
            if e.acked {
                acked.push(e.organ.clone());
                continue;
            }
            e.nacked = if reason.is_empty() {
                "failed".into()
            } else {
                reason.to_owned()
            };
            plan.audit(
                "nacked",
                &e.doc_id,
                &e.from,
                format!("by {}: {}", e.organ, e.nacked),
            );
            out.push(e.organ.parse().map_err(internal)?);
            plan.inbox.insert(key, e);
        }
        // Said, not an empty answer: the sender holds the ACKED receipt.
        if out.is_empty() && !acked.is_empty() {
            return Err(Refusal::new(
                Code::FailedPrecondition,
                format!(
                    "{doc_id} was already acknowledged by {}: the sender has its signed receipt, and a nack cannot take it back (answer with a business status instead)",
                    acked.join(", ")
                ),
            )
            .into());
        }
        let ticket = if plan.inbox.is_empty() {
            drop(w);
            self.commit.current()
        } else {
            self.finish(w, plan)?
        };
        Ok((out, ticket))
    }

    /// A queue entry could not be read (now): whether to try again, which
    /// it is for [`READ_RETRY_MS`] after the first failure. A failure that
    /// long after the last one starts the count again: the time between was
    /// not spent failing (the link was down, say), and one failure after an
    /// outage does not give up at once.
    pub fn retry_read(&self, queue: &str, seq: u64) -> bool {
        let now = now_ms();
        let limit = self.read_retry_ms.load(Ordering::Relaxed);
        let mut m = self.read_failures.lock().unwrap_or_else(|p| p.into_inner());
        forget_quiet_failures(&mut m, now, limit);
        let (first, last) = m.entry((queue.to_owned(), seq)).or_insert((now, now));
        *last = now;
        let retry = now - *first < limit;
        if !retry {
            m.remove(&(queue.to_owned(), seq));
        }
        self.read_failing.store(m.len(), Ordering::Relaxed);
        retry
    }

    #[cfg(test)]
    pub fn set_read_retry_ms(&self, ms: i64) {
        self.read_retry_ms.store(ms, Ordering::Relaxed);
    }

    /// A queue entry was read: earlier failures are forgotten (no lock
    /// taken while there are none, the common case on the send path), and
    /// so are those of entries that left the queue some other way meanwhile
    /// once they are quiet for long.
    pub fn read_ok(&self, queue: &str, seq: u64) {
        if self.read_failing.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut m = self.read_failures.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&(queue.to_owned(), seq));
        forget_quiet_failures(&mut m, now_ms(), self.read_retry_ms.load(Ordering::Relaxed));
        self.read_failing.store(m.len(), Ordering::Relaxed);
    }

    /// Moves when `queue` gets new entries (from the time it is called).
    pub fn notifier(&self, queue: &str) -> tokio::sync::watch::Receiver<u64> {
        let mut map = self.notifiers.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(queue.to_owned())
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }

    /// Tells `queue`'s senders it has new entries (a queue nobody sends
    /// yet has no channel: its sender reads it whole when it starts).
    fn notify_queue(&self, queue: &str) {
        let map = self.notifiers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = map.get(queue) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    pub async fn durable(&self, ticket: Ticket) -> Result<(), NodeError> {
        Ok(self.commit.durable(ticket).await?)
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The counts (see `counts`): never held while waiting for anything.
    fn lock_counts(&self) -> MutexGuard<'_, HashMap<String, i64>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory this node routes and checks by.
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.read().map(|d| d.clone()).unwrap_or_default()
    }

    /// What a node routes by: the parent's directory (if any) with its own on top.
    /// An edge that has not heard from its parent yet has version 0: recipients
    /// are then checked by the parent only.
    fn merge_directories(
        has_parent: bool,
        received: Option<&Directory>,
        own: &Directory,
    ) -> Directory {
        let mut d = match received {
            Some(r) => r.clone().merged_with(own),
            None => own.clone(),
        };
        // Version 0 says "incomplete": a node whose parent has not sent a complete
        // directory passes that on, and its children check recipients no more
        // than it can.
        let complete = !has_parent || received.is_some_and(|r| r.version != 0);
        d.version = if complete { d.content_version() } else { 0 };
        d
    }

    fn remerge(&self) {
        let has_parent = self.routing().has_parent();
        // One merge at a time, both sources read under the lock: of two
        // changes racing (the parent's directory, a local registration), the
        // older merge cannot be written last.
        let Ok(mut cur) = self.directory.write() else {
            return;
        };
        let received = self
            .received_directory
            .read()
            .map(|r| r.clone())
            .unwrap_or_default();
        let own = self
            .own_directory
            .read()
            .map(|o| o.clone())
            .unwrap_or_default();
        let merged = Self::merge_directories(has_parent, received.as_ref(), &own);
        // By content, not version: before the parent's first directory every
        // merge has version 0, and local registrations must still be published.
        if **cur == merged {
            return;
        }
        let version = merged.version;
        *cur = Arc::new(merged);
        drop(cur);
        self.directory_changed.send_replace(version);
    }

    /// Resolves when the directory changes (children's links send it on).
    pub fn directory_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.directory_changed.subscribe()
    }

    /// The routing table now (it changes when agencies are registered or removed).
    pub fn routing(&self) -> Arc<RoutingTable> {
        self.routes.read().map(|r| r.clone()).unwrap_or_default()
    }

    /// Takes the directory a parent sent, keeps it for restarts.
    pub fn set_directory(&self, d: &pb::Directory) -> Result<(), NodeError> {
        // By content: a relay that has not met its own parent yet sends
        // version 0 each time its registrations change.
        let new = Directory::from_pb(d);
        if let Ok(cur) = self.received_directory.read()
            && cur.as_ref() == Some(&new)
        {
            return Ok(());
        }
        let mut b = Batch::new();
        b.put(
            Space::Meta,
            Key::new().str("directory").build(),
            d.encode_to_vec(),
        );
        self.commit.apply(b)?;
        if let Ok(mut r) = self.received_directory.write() {
            *r = Some(new);
        }
        self.remerge();
        tracing::info!(
            version = d.version,
            agencies = d.agencies.len(),
            "directory updated from parent"
        );
        Ok(())
    }

    /// What of a child's report may be shown and alerted on: the child itself
    /// first, then nodes that form a tree below it. A node name that is not a
    /// node id, this node, its parent, another child or a node the directory
    /// places below another child, a node twice, or a parent not reported
    /// before it, is left out (a report is the child's word, and its names
    /// become metric labels and the dashboard's tree). Free-text fields are
    /// cut to [`REPORT_TEXT`] characters.
    pub fn trusted_report(&self, child: &NodeId, nodes: Vec<pb::NodeView>) -> Vec<pb::NodeView> {
        let routing = self.routing();
        let dir = self.directory();
        // Nodes the directory places below another child. Most reports (an
        // edge's, every heartbeat) name only the child itself: no walk then.
        let below_others: HashSet<&str> = if nodes.len() > 1 {
            dir.entries
                .iter()
                .filter(|(o, _)| routing.child_of(o).is_some_and(|c| c != child))
                .map(|(_, e)| e.node.as_str())
                .collect()
        } else {
            HashSet::new()
        };
        let elsewhere = |node: &NodeId| {
            node == &self.node_id
                || self.parent.as_ref() == Some(node)
                || (node != child && routing.is_child(node))
                || below_others.contains(node.as_str())
        };
        let mut placed: BTreeSet<String> = BTreeSet::new();
        let mut out = Vec::new();
        let mut dropped = 0usize;
        for (i, mut n) in nodes.into_iter().enumerate() {
            let ok = match n.node.parse::<NodeId>() {
                Ok(node) if i == 0 => &node == child,
                Ok(node) => {
                    !elsewhere(&node) && !placed.contains(&n.node) && placed.contains(&n.parent)
                }
                Err(_) => false,
            };
            if !ok {
                dropped += 1;
                continue;
            }
            for text in [&mut n.role, &mut n.link, &mut n.version] {
                if let Some((at, _)) = text.char_indices().nth(REPORT_TEXT) {
                    text.truncate(at);
                }
                text.retain(|c| !c.is_control());
            }
            n.agencies.retain(|a| a.parse::<OrganId>().is_ok());
            placed.insert(n.node.clone());
            out.push(n);
        }
        if dropped > 0 {
            tracing::warn!(peer = %child, dropped, "a child's report names nodes it cannot speak for; those are left out");
        }
        out
    }

    /// Node `n` serves agencies below `child` (a relay under a relay), as the
    /// directory says.
    fn node_below(&self, child: &NodeId, n: &NodeId) -> bool {
        let routing = self.routing();
        self.directory()
            .entries
            .iter()
            .any(|(o, e)| e.node == n.as_str() && routing.child_of(o) == Some(child))
    }

    /// Node `node` is this one or in its subtree: a configured child, or a
    /// node this node's own registrations name.
    fn here_or_below(&self, node: &str) -> bool {
        node == self.node_id.as_str()
            || node
                .parse::<NodeId>()
                .is_ok_and(|n| self.routing().is_child(&n))
            || self
                .own_directory
                .read()
                .is_ok_and(|own| own.entries.values().any(|e| e.node == node))
    }

    /// `organ`'s entry in the directory the parent sent, if it has one.
    fn received_entry(&self, organ: &OrganId) -> Option<pb::AgencyEntry> {
        let received = self.received_directory.read().ok()?;
        received.as_ref()?.entries.get(organ).cloned()
    }

    /// This node and what it knows of the tree below it: agencies per node from the
    /// directory; link state, last frame, queue depth, version and certificate
    /// expiry for its own links; and, for nodes further down, what each child
    /// last reported (link state as seen by their own parent).
    pub fn node_tree(&self) -> Vec<pb::NodeView> {
        let routing = self.routing();
        let dir = self.directory();
        let mut by_node: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in dir.entries.values() {
            by_node
                .entry(e.node.clone())
                .or_default()
                .push(e.organ.clone());
        }
        let me = self.node_id.to_string();
        let parent_info = self
            .parent
            .as_ref()
            .map(|p| self.telemetry.peer(p).unwrap_or_default());
        let mut out = vec![pb::NodeView {
            node: me.clone(),
            parent: String::new(),
            role: self.role().into(),
            agencies: by_node.remove(&me).unwrap_or_default(),
            link: match &self.parent {
                Some(p) if self.is_connected(p) => format!("up to {p}"),
                Some(p) => format!("down to {p}"),
                None => String::new(),
            },
            last_seen_ms: self.parent.as_ref().map(|p| self.last_seen(p)).unwrap_or(0),
            queue_depth: self.queue_depth("parent"),
            version: env!("CARGO_PKG_VERSION").into(),
            cert_not_after_ms: self.telemetry.own_cert_not_after.load(Ordering::Relaxed) * 1000,
            reported_at_ms: 0,
            down_since_ms: parent_info
                .filter(|i| !i.up)
                .map(|i| i.down_since_ms)
                .unwrap_or(0),
        }];
        // Which direct child each deeper node is reached through (directory).
        let mut via: BTreeMap<String, String> = BTreeMap::new();
        for e in dir.entries.values() {
            if let Ok(o) = e.organ.parse::<OrganId>()
                && let Some(c) = routing.child_of(&o)
                && c.as_str() != e.node
            {
                via.insert(e.node.clone(), c.to_string());
            }
        }
        for child in routing.child_nodes() {
            let up = self.is_connected(child);
            let info = self.telemetry.peer(child).unwrap_or_default();
            let report = self.telemetry.report(child);
            let reported_self = report
                .as_ref()
                .and_then(|(_, nodes)| nodes.first())
                .filter(|n| n.node == child.as_str());
            let below: Vec<&String> = via
                .iter()
                .filter(|(_, c)| *c == child.as_str())
                .map(|(n, _)| n)
                .collect();
            out.push(pb::NodeView {
                node: child.to_string(),
                parent: me.clone(),
                role: match reported_self {
                    Some(r) if !r.role.is_empty() => r.role.clone(),
                    _ if below.is_empty() => "edge".into(),
                    _ => "relay".into(),
                },
                agencies: by_node.remove(child.as_str()).unwrap_or_default(),
                link: if up { "up".into() } else { "down".into() },
                last_seen_ms: self.last_seen(child),
                queue_depth: self.queue_depth(&format!("child:{child}")),
                version: if info.version.is_empty() {
                    reported_self.map(|r| r.version.clone()).unwrap_or_default()
                } else {
                    info.version.clone()
                },
                cert_not_after_ms: if info.cert_not_after != 0 {
                    info.cert_not_after * 1000
                } else {
                    reported_self.map(|r| r.cert_not_after_ms).unwrap_or(0)
                },
                reported_at_ms: 0,
                down_since_ms: if up {
                    0
                } else if info.down_since_ms != 0 {
                    info.down_since_ms
                } else {
                    self.telemetry.started_ms
                },
            });
            match report {
                Some((at, nodes)) => {
                    for mut n in nodes.into_iter().skip(1) {
                        n.reported_at_ms = at;
                        if !up {
                            // What the child last said; it may have changed since.
                            n.link = format!("unknown (via {child})");
                        }
                        by_node.remove(&n.node);
                        out.push(n);
                    }
                }
                None => {
                    for n in below {
                        out.push(pb::NodeView {
                            node: n.clone(),
                            parent: child.to_string(),
                            agencies: by_node.remove(n).unwrap_or_default(),
                            link: format!("via {child}"),
                            ..Default::default()
                        });
                    }
                }
            }
        }
        out
    }

    /// hub, relay or edge.
    pub fn role(&self) -> &'static str {
        let routing = self.routing();
        match (routing.has_parent(), routing.child_nodes().next().is_some()) {
            (true, true) => "relay",
            (false, _) => "hub",
            (true, false) => "edge",
        }
    }

    /// Every direct link (parent, then children) with what is known of it.
    pub fn links(&self) -> Vec<(NodeId, &'static str, crate::telemetry::PeerInfo)> {
        let mut out = Vec::new();
        let info = |n: &NodeId| {
            let mut i = self.telemetry.peer(n).unwrap_or_default();
            i.up = self.is_connected(n);
            i
        };
        if let Some(p) = &self.parent {
            out.push((p.clone(), "parent", info(p)));
        }
        for c in self.routing().child_nodes() {
            out.push((c.clone(), "child", info(c)));
        }
        out
    }

    /// Certificates this node uses or sees, with their expiry (Unix seconds).
    pub fn certificates(&self) -> Vec<(String, i64)> {
        let mut out = vec![(
            format!("node:{}", self.node_id),
            self.telemetry.own_cert_not_after.load(Ordering::Relaxed),
        )];
        let mut agencies: Vec<(String, i64)> = self
            .signers
            .iter()
            .map(|(o, s)| (format!("agency:{o}"), s.not_after()))
            .collect();
        agencies.sort();
        out.extend(agencies);
        for (peer, _, info) in self.links() {
            if info.cert_not_after != 0 {
                out.push((format!("peer:{peer}"), info.cert_not_after));
            }
        }
        out
    }

    /// The store takes writes: no failed flush, no request or flush hanging,
    /// and free space above the reserve.
    pub fn writable(&self) -> bool {
        self.unwritable().is_none()
    }

    /// Why the store does not take writes now, if it does not.
    pub fn unwritable(&self) -> Option<Unwritable> {
        if !self.commit.healthy() {
            return Some(Unwritable::FlushFailed);
        }
        if let Some(why) = self.store.stalled() {
            return Some(Unwritable::Hangs(why));
        }
        if let Some(d) = self.commit.flush_stalled(STALL_AFTER) {
            return Some(Unwritable::FlushHangs(d));
        }
        // As last sampled: a filesystem that hangs holds no health check.
        match self.blobs.disk_usage().map(|(_, free)| free) {
            Ok(f) if f >= self.storage.min_free_bytes => None,
            Ok(_) => Some(Unwritable::LowSpace),
            Err(e) => Some(Unwritable::SpaceUnknown(e.to_string())),
        }
    }

    /// What needs an operator now, by the thresholds of `[alerts]`, with the
    /// queues as `snapshot` read them (the caller's page shows the same).
    pub fn alerts(
        &self,
        cfg: &crate::config::AlertSection,
        snapshot: &Result<QueueSnapshot, NodeError>,
    ) -> Vec<crate::telemetry::Alert> {
        use crate::telemetry::Alert;
        let now = now_ms();
        let mut out = Vec::new();
        let unwritable = self.unwritable();
        // Unreadable queues hide overdue documents: that is an alert of its
        // own, not "nothing overdue" (unless the store alert below gives the
        // same reason: a hang already known).
        let said_below = |e: &NodeError| match (e, &unwritable) {
            (
                NodeError::Store(truc_store::StoreError::Stalled(why)),
                Some(Unwritable::Hangs(known)),
            ) => why == known,
            _ => false,
        };
        if let Err(e) = snapshot
            && !said_below(e)
        {
            out.push(Alert {
                kind: "store",
                subject: self.node_id.to_string(),
                detail: format!("the queues cannot be read: {e}"),
            });
        }
        if let Ok(snap) = snapshot {
            // Held entries that cannot be read: listed as such, and told here
            // (a read of the lists finds them, not a scrape's counts).
            if let Some(first) = snap.unreadable.first() {
                let n = snap.unreadable.len();
                out.push(Alert {
                    kind: "store",
                    subject: self.node_id.to_string(),
                    detail: format!(
                        "{n} held entr{} cannot be read (listed as such; truc discard --all --queue QUEUE drops them), the first {first}",
                        if n == 1 { "y" } else { "ies" }
                    ),
                });
            }
            let mut by: BTreeMap<&str, (u64, u32, u64)> = BTreeMap::new();
            for ((recipient, priority, parked), n) in &snap.overdue_counts {
                let e = by.entry(recipient.as_str()).or_default();
                e.0 += n;
                e.1 = e.1.max(*priority);
                e.2 += if *parked { *n } else { 0 };
            }
            for (organ, (n, prio, parked)) in by {
                out.push(Alert {
                    kind: "overdue",
                    subject: organ.to_owned(),
                    detail: format!(
                        "{n} document(s) past their deadline (highest priority {prio}, {parked} parked)"
                    ),
                });
            }
        }
        for (peer, dir, info) in self.links() {
            if info.up {
                continue;
            }
            let since = if info.down_since_ms != 0 {
                info.down_since_ms
            } else {
                self.telemetry.started_ms
            };
            if now - since > cfg.link_down_ms as i64 {
                out.push(Alert {
                    kind: "link_down",
                    subject: peer.to_string(),
                    detail: format!("link to {dir} {peer} down for {} s", (now - since) / 1000),
                });
            }
        }
        // Links further down, as the children report them (each relay also
        // raises these itself; here the operator above sees them too).
        for child in self.routing().child_nodes() {
            if !self.is_connected(child) {
                continue;
            }
            let Some((_, nodes)) = self.telemetry.report(child) else {
                continue;
            };
            for n in nodes.iter().skip(1) {
                if n.link == "down"
                    && n.down_since_ms > 0
                    && now - n.down_since_ms > cfg.link_down_ms as i64
                {
                    out.push(Alert {
                        kind: "link_down",
                        subject: n.node.clone(),
                        detail: format!(
                            "link from {} to {} down for {} s (reported by {child})",
                            n.parent,
                            n.node,
                            (now - n.down_since_ms) / 1000
                        ),
                    });
                }
            }
        }
        let horizon = now / 1000 + cfg.cert_expiry_days as i64 * 86_400;
        for (subject, t) in self.certificates() {
            if t != 0 && t < horizon {
                let days = (t - now / 1000) / 86_400;
                out.push(Alert {
                    kind: "cert_expiry",
                    detail: if days < 0 {
                        format!("{subject} has expired")
                    } else {
                        format!("{subject} expires in {days} day(s)")
                    },
                    subject,
                });
            }
        }
        if let Ok((total, free)) = self.blobs.disk_usage()
            && total > 0
        {
            let used = 1.0 - free as f64 / total as f64;
            if used > cfg.disk_high_water {
                out.push(Alert {
                    kind: "disk",
                    subject: self.node_id.to_string(),
                    detail: format!(
                        "disk {:.0}% full (high water {:.0}%)",
                        used * 100.0,
                        cfg.disk_high_water * 100.0
                    ),
                });
            }
        }
        if let Some(why) = unwritable {
            out.push(Alert {
                kind: "store",
                subject: self.node_id.to_string(),
                detail: why.to_string(),
            });
        }
        // A revocation list past its next update fails closed: every
        // handshake it covers is refused, every document signed under it
        // deferred.
        for (which, path, next) in self.telemetry.crls() {
            if next > 0 && now / 1000 >= next {
                out.push(Alert {
                    kind: "crl",
                    subject: format!("{which}:{path}"),
                    detail: format!(
                        "revocation list {path} is past its next update: {} until a new one is published",
                        crl_stale_effect(&which)
                    ),
                });
            } else if next > 0 && now / 1000 + 86_400 >= next {
                // Its own kind: a warning to act on, where a stale or
                // missing list (`crl`) already refuses work.
                out.push(Alert {
                    kind: "crl_due",
                    subject: format!("{which}:{path}"),
                    detail: format!(
                        "revocation list {path} is due for its next update within a day"
                    ),
                });
            }
        }
        // A list missing for an issuer of a signer's chain fails closed as a
        // stale one does: raised while it happened in the last
        // UNLISTED_ALERT_SECS, on the verifier's clock (not the test hook's).
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let since = wall.saturating_sub(UNLISTED_ALERT_SECS);
        for (which, v, setting) in [
            ("signing", &self.verifiers.agencies, "signing.crls"),
            ("transport", &self.verifiers.nodes, "tls.crls"),
        ] {
            for (issuer, at) in v.unlisted_issuers(since) {
                out.push(Alert {
                    kind: "crl",
                    subject: format!("{which}:{issuer}"),
                    detail: format!(
                        "no revocation list here covers {issuer}, a CA of signers' chains (last needed {} s ago): what is signed under its certificates is deferred (its senders keep it and retry); add its list to {setting}",
                        wall.saturating_sub(at),
                    ),
                });
            }
        }
        if let Some(a) = self.telemetry.audit()
            && !a.ok
        {
            out.push(Alert {
                kind: "audit",
                subject: self.node_id.to_string(),
                detail: format!("audit chain does not verify: {}", a.reason),
            });
        }
        out.sort();
        // One alert per kind and subject (one metric series each): two
        // reasons for the same alert are one alert saying both.
        out.dedup_by(|later, kept| {
            let same = later.kind == kept.kind && later.subject == kept.subject;
            if same {
                kept.detail = format!("{}; {}", kept.detail, later.detail);
            }
            same
        });
        out
    }

    /// Notes that a frame came from `peer`.
    pub fn seen(&self, peer: &NodeId) {
        if let Ok(mut m) = self.last_seen.lock() {
            m.insert(peer.clone(), now_ms());
        }
    }

    pub fn last_seen(&self, peer: &NodeId) -> i64 {
        self.last_seen
            .lock()
            .ok()
            .and_then(|m| m.get(peer).copied())
            .unwrap_or(0)
    }

    /// Walks `organ`'s administrative parents (in `pending` first, then the
    /// directory) and says whether the chain reaches `root`.
    fn reaches(
        &self,
        organ: &OrganId,
        root: &OrganId,
        pending: &BTreeMap<OrganId, Option<OrganId>>,
    ) -> bool {
        let dir = self.directory();
        let mut cur = Some(organ.clone());
        for _ in 0..32 {
            let Some(o) = cur else { return false };
            if &o == root {
                return true;
            }
            cur = match pending.get(&o) {
                Some(p) => p.clone(),
                None => dir.get(&o).and_then(|e| e.parent.parse().ok()),
            };
        }
        false
    }

    /// Checks and plans directory changes made here (origin Local) or sent by a
    /// child relay for its subtree, then passes them up, signed by this node.
    fn plan_directory(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        v: &Verified,
        origin: &Origin,
        now: i64,
    ) -> Result<(), NodeError> {
        let routing = self.routing();
        let mut pending: BTreeMap<OrganId, Option<OrganId>> = BTreeMap::new();
        let via_child = match origin {
            Origin::Child(c) => {
                let Some(grant) = self.child_grants.get(c) else {
                    return Err(Refusal::denied(format!(
                        "node {c} has no grant to register agencies"
                    ))
                    .into());
                };
                Some((c.clone(), grant.clone()))
            }
            Origin::Local => None,
            Origin::Parent(p) => {
                return Err(Refusal::denied(format!(
                    "parent {p} sends directories, not directory changes"
                ))
                .into());
            }
        };
        let mut changes = Vec::new();
        for c in &v.directory {
            let who = via_child
                .as_ref()
                .map(|(n, _)| n.to_string())
                .unwrap_or_else(|| "this node".into());
            if routing.is_local(&c.organ) {
                return Err(Refusal::denied(format!(
                    "{} is served by node {} itself",
                    c.organ, self.node_id
                ))
                .into());
            }
            let bound = routing.child_of(&c.organ).cloned();
            let via = match &via_child {
                Some((child, _)) => child.clone(),
                None => match (&c.node, c.remove) {
                    (_, true) => bound.clone().ok_or_else(|| {
                        Refusal::not_found(format!("{} is not registered below this node", c.organ))
                    })?,
                    (Some(n), false) if routing.is_child(n) => n.clone(),
                    (Some(n), false) => {
                        return Err(Refusal::invalid(format!(
                            "node {n} is not a child of {}",
                            self.node_id
                        ))
                        .into());
                    }
                    (None, false) => {
                        return Err(Refusal::invalid(
                            "an added agency names the node that serves it",
                        )
                        .into());
                    }
                },
            };
            if let Some(b) = &bound
                && b != &via
            {
                return Err(Refusal::denied(format!(
                    "{} is served by node {b}, not below {via}",
                    c.organ
                ))
                .into());
            }
            if c.remove && bound.is_none() {
                return Err(Refusal::not_found(format!(
                    "{} is not registered below {who}",
                    c.organ
                ))
                .into());
            }
            // What the configuration binds comes back at the next start:
            // removing it here would last until then, and the parent and the
            // children would have dropped it meanwhile.
            if c.remove
                && self
                    .store
                    .get(
                        Space::Meta,
                        &Key::new().str("reg").str(c.organ.as_str()).build(),
                    )?
                    .is_none()
            {
                return Err(Refusal::new(
                    Code::FailedPrecondition,
                    format!(
                        "{} is bound by this node's configuration ([[children]] organs): remove it there and restart",
                        c.organ
                    ),
                )
                .into());
            }
            // An agency the parent's directory already places elsewhere is
            // not this subtree's to claim: the parent would refuse the change,
            // and meanwhile this node would route its mail below.
            if !c.remove
                && bound.is_none()
                && let Some(e) = self.received_entry(&c.organ)
                && !self.here_or_below(&e.node)
            {
                return Err(Refusal::denied(format!(
                    "{} is already in the directory, served by node {}: it cannot be registered below {who}",
                    c.organ, e.node
                ))
                .into());
            }
            // The grant: a child registers inside its own; a relay's operator inside
            // the relay's. The hub (no parent, no grant) is the authority.
            let root = match (&via_child, &self.grant) {
                (Some((_, g)), _) => Some(g.clone()),
                (None, Some(g)) => Some(g.clone()),
                (None, None) => None,
            };
            if !c.remove {
                pending.insert(c.organ.clone(), c.parent.clone());
            }
            if let Some(root) = root
                && !self.reaches(&c.organ, &root, &pending)
            {
                return Err(Refusal::denied(format!(
                    "{} is outside the grant of {who} ({root}): its parent chain does not reach {root}",
                    c.organ
                ))
                .into());
            }
            changes.push((c.clone(), via));
        }
        for (c, via) in &changes {
            let key = Key::new().str("reg").str(c.organ.as_str()).build();
            if c.remove {
                plan.batch.delete(Space::Meta, key);
            } else {
                let entry = pb::AgencyEntry {
                    organ: c.organ.to_string(),
                    name: c.name.clone(),
                    parent: c.parent.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                    node: c.node.as_ref().map(|n| n.to_string()).unwrap_or_default(),
                };
                plan.batch.put(
                    Space::Meta,
                    key,
                    record::encode(&Registration {
                        entry: Some(entry),
                        via: via.to_string(),
                    }),
                );
            }
            plan.directory.push((c.clone(), via.clone()));
            plan.audit(
                if c.remove {
                    "directory remove"
                } else {
                    "directory add"
                },
                &v.doc_id.to_string(),
                &v.from.to_string(),
                format!(
                    "{}{} via {via}",
                    c.organ,
                    c.node
                        .as_ref()
                        .map(|n| format!(" served by {n}"))
                        .unwrap_or_default()
                ),
            );
        }
        // The parent hears of it from this node, which answers for its subtree.
        if routing.has_parent() && matches!(origin, Origin::Child(_)) {
            self.plan_new_directory_change(w, plan, &v.directory, now)?;
        }
        Ok(())
    }

    /// Stores a directory message: one made here goes to the parent's queue; one
    /// from a child is checked against its grant and applied.
    fn plan_directory_message(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        v: &Verified,
        origin: &Origin,
        now: i64,
    ) -> Result<Planned, NodeError> {
        let from_key = v.from.to_string();
        let doc_id = v.doc_id.to_string();
        let dkey = doc_key(&from_key, &doc_id);
        let (envelope, envelope_sha256) = self.plan_envelope(plan, v)?;
        plan.docs.insert(
            dkey.clone(),
            DocRecord {
                envelope,
                envelope_sha256,
                header_sha256: v.header_sha256.0.to_vec(),
                origin: origin.label(),
                received_at_ms: now,
                signer: v.signer.clone(),
                kind: v.header.kind,
                ..Default::default()
            },
        );
        plan.batch
            .put(Space::Dedup, dkey, v.header_sha256.0.to_vec());
        match origin {
            Origin::Local => {
                let entry = QueueEntry {
                    from: from_key.clone(),
                    doc_id: doc_id.clone(),
                    recipients: Vec::new(),
                    enqueued_at_ms: now,
                    kind: v.header.kind,
                    priority: 0,
                    deadline_ms: 0,
                };
                let note = "directory change for the parent".to_owned();
                self.plan_enqueue(w, plan, "parent".into(), &entry, "queued", note)?;
            }
            _ => {
                plan.audit(
                    "received",
                    &doc_id,
                    &from_key,
                    format!("directory change from {}", origin.label()),
                );
                self.plan_directory(w, plan, v, origin, now)?;
            }
        }
        Ok(Planned::Stored)
    }

    /// A directory change signed by this node, queued for the parent.
    fn plan_new_directory_change(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        changes: &[envelope::DirectoryFact],
        now: i64,
    ) -> Result<DocId, NodeError> {
        let key = self.node_signer.as_ref().ok_or_else(|| {
            NodeError::Other("this node has no node key to sign directory changes".into())
        })?;
        let header = pb::Header {
            format_version: envelope::FORMAT_VERSION,
            doc_id: DocId::new_v7().to_string(),
            kind: pb::Kind::Directory as i32,
            from_node: self.node_id.to_string(),
            created_at_ms: now,
            directory: Some(pb::DirectoryChanges {
                changes: changes
                    .iter()
                    .map(|c| pb::DirectoryChange {
                        remove: c.remove,
                        organ: c.organ.to_string(),
                        name: c.name.clone(),
                        parent: c.parent.as_ref().map(|p| p.to_string()).unwrap_or_default(),
                        node: c.node.as_ref().map(|n| n.to_string()).unwrap_or_default(),
                    })
                    .collect(),
            }),
            ..Default::default()
        };
        let sealed = envelope::seal(&header, key)?;
        let v = envelope::verify_own(sealed, &self.verifiers, &self.limits, UnixTime::now())?;
        let id = v.doc_id;
        let dkey = doc_key(&v.from.to_string(), &id.to_string());
        plan.fresh.push((dkey, v.header_sha256.0));
        self.plan_message(w, plan, &v, &Origin::Local, None, now)?;
        Ok(id)
    }

    /// Registers or removes an agency below this node (an operator's change): checked
    /// against the grant, applied, and passed up signed. Blocking.
    pub fn change_directory(
        &self,
        c: envelope::DirectoryFact,
    ) -> Result<(DocId, Ticket), NodeError> {
        let now = now_ms();
        let mut w = self.lock();
        let mut plan = Plan::default();
        let local = Verified {
            envelope: pb::SignedEnvelope::default(),
            header: pb::Header::default(),
            header_sha256: Digest([0; 32]),
            doc_id: DocId::new_v7(),
            kind: Kind::Directory,
            from: Sender::Node(self.node_id.clone()),
            to: Vec::new(),
            signer: String::new(),
            attachments: Vec::new(),
            business: BusinessType::New,
            target: None,
            changes: Vec::new(),
            receipt: None,
            status: None,
            directory: vec![c],
            envelope_blob: None,
        };
        self.plan_directory(&mut w, &mut plan, &local, &Origin::Local, now)?;
        let id = if self.routing().has_parent() {
            self.plan_new_directory_change(&mut w, &mut plan, &local.directory, now)?
        } else {
            local.doc_id
        };
        let ticket = self.finish(w, plan)?;
        Ok((id, ticket))
    }

    /// Applies planned directory changes to the routing table and the directory.
    fn apply_directory(&self, changes: Vec<(envelope::DirectoryFact, NodeId)>) {
        if changes.is_empty() {
            return;
        }
        let mut routing = (*self.routing()).clone();
        if let Ok(mut own) = self.own_directory.write() {
            for (c, via) in changes {
                if c.remove {
                    routing.remove_child_organ(&c.organ);
                    own.entries.remove(&c.organ);
                } else {
                    routing.add_child_organ(c.organ.clone(), via);
                    own.entries.insert(
                        c.organ.clone(),
                        pb::AgencyEntry {
                            organ: c.organ.to_string(),
                            name: c.name,
                            parent: c.parent.map(|p| p.to_string()).unwrap_or_default(),
                            node: c.node.map(|n| n.to_string()).unwrap_or_default(),
                        },
                    );
                }
            }
        }
        if let Ok(mut r) = self.routes.write() {
            *r = Arc::new(routing);
        }
        // Documents queued for an agency that moved are routed again by the
        // next sweep, which reads every queue to its end for them.
        self.next_short_deadline.store(0, Ordering::Relaxed);
        self.remerge();
    }

    pub fn set_connected(&self, child: &NodeId, up: bool) {
        let mut c = self.connected.lock().unwrap_or_else(|p| p.into_inner());
        if up {
            c.insert(child.clone());
        } else {
            c.remove(child);
            // Its queue was not read while it was up: the next sweep reads
            // every queue for shortened deadlines.
            self.next_short_deadline.store(0, Ordering::Relaxed);
        }
    }

    /// Claims the writing of the partial copy of `digest`.
    pub fn claim_partial(&self, digest: Digest) -> Claim {
        let mut m = self.partials.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = m.get(&digest) {
            return Claim::Busy(rx.clone());
        }
        let (tx, rx) = tokio::sync::watch::channel(None);
        m.insert(digest, rx);
        Claim::Mine(PartialGuard {
            digest,
            tx,
            owner: self.partials.clone(),
            ok: false,
        })
    }

    /// Claims the receiving of upload `id`: one stream at a time, since two
    /// writing one partial file would mix their bytes under a digest only one
    /// of them was hashed for. A stream that has it is asked to let go (see
    /// [`UploadClaim::taken_over`]) and this waits until it has.
    pub async fn claim_upload(&self, id: uuid::Uuid) -> UploadClaim {
        let slot = {
            let mut m = self.uploading.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(id).or_default().clone()
        };
        let mut mine = 0;
        slot.asked.send_modify(|n| {
            *n += 1;
            mine = *n;
        });
        let turn = slot.turn.clone().lock_owned().await;
        UploadClaim {
            id,
            slot,
            mine,
            owner: self.uploading.clone(),
            _turn: turn,
        }
    }

    fn partial_key(name: &str) -> Vec<u8> {
        Key::new().str("partial").str(name).build()
    }

    /// The durable offset recorded for a partial file (0 if none).
    pub fn partial_offset(&self, name: &str) -> Result<u64, NodeError> {
        Ok(self
            .store
            .get(Space::Meta, &Self::partial_key(name))?
            .and_then(|v| trailing_u64(&v))
            .unwrap_or(0))
    }

    /// Records that a partial file is durable up to `offset` (after its fsync).
    pub fn record_partial(&self, name: &str, offset: u64) -> Result<Ticket, NodeError> {
        let mut b = Batch::new();
        b.put(
            Space::Meta,
            Self::partial_key(name),
            offset.to_be_bytes().to_vec(),
        );
        Ok(self.commit.apply(b)?)
    }

    pub fn clear_partial(&self, name: &str) -> Result<(), NodeError> {
        let mut b = Batch::new();
        b.delete(Space::Meta, Self::partial_key(name));
        self.commit.apply(b)?;
        Ok(())
    }

    fn upload_key(id: &uuid::Uuid) -> Vec<u8> {
        Key::new().str("upload").str(&id.to_string()).build()
    }

    /// A finished upload: its digest and size, while its file is still kept
    /// (one the orphan sweep took is to be uploaded again).
    pub fn upload_done(&self, id: &uuid::Uuid) -> Result<Option<(Digest, u64)>, NodeError> {
        Ok(self.finished_upload(id)?.map(|(d, size, _)| (d, size)))
    }

    /// A finished upload whose file is kept: digest, size, and whether it
    /// was recorded before uploads named their application (no owner then).
    pub fn finished_upload(
        &self,
        id: &uuid::Uuid,
    ) -> Result<Option<(Digest, u64, bool)>, NodeError> {
        Ok(self
            .store
            .get(Space::Meta, &Self::upload_key(id))?
            .and_then(|v| {
                let d = Digest::from_slice(v.get(..32)?)?;
                let size = trailing_u64(v.get(32..40)?)?;
                Some((d, size, v.len() == 40))
            })
            .filter(|(d, _, _)| self.blobs.contains(d)))
    }

    /// `d` recorded as `owner`'s upload, unless it is already: for the
    /// retry of an upload finished before uploads named their application
    /// ([`Self::finished_upload`] says which). The write, if one was made.
    pub fn own_upload(&self, owner: &str, d: &Digest) -> Result<Option<Ticket>, NodeError> {
        if self.uploaded_by(owner, d)? {
            return Ok(None);
        }
        let mut b = Batch::new();
        b.put(Space::Meta, Self::uploaded_by_key(owner, d), Vec::new());
        Ok(Some(self.commit.apply(b)?))
    }

    /// Records a finished upload (so a retry of it answers at once) and drops its
    /// partial record, in one write; and that `owner` (a REST application)
    /// uploaded `d`, which it alone may then name in a document.
    pub fn finish_upload(
        &self,
        id: &uuid::Uuid,
        partial: &str,
        d: &Digest,
        size: u64,
        owner: Option<&str>,
    ) -> Result<Ticket, NodeError> {
        let mut b = Batch::new();
        b.delete(Space::Meta, Self::partial_key(partial));
        let mut v = d.0.to_vec();
        v.extend_from_slice(&size.to_be_bytes());
        // Longer than a record from before owners were kept, owner or not.
        v.push(u8::from(owner.is_some()));
        b.put(Space::Meta, Self::upload_key(id), v);
        if let Some(owner) = owner {
            b.put(Space::Meta, Self::uploaded_by_key(owner, d), Vec::new());
        }
        Ok(self.commit.apply(b)?)
    }

    /// By digest first: the orphan sweep drops a file's owners with it.
    fn uploaded_by_key(owner: &str, d: &Digest) -> Vec<u8> {
        let mut k = Self::uploaded_by_prefix(d);
        k.extend(Key::new().str(owner).build());
        k
    }

    fn uploaded_by_prefix(d: &Digest) -> Vec<u8> {
        Key::new().str("uploaded-by").str(&d.to_string()).build()
    }

    /// Whether `owner` uploaded the file with digest `d`, still kept: a file
    /// on this edge that another application uploaded, or an attachment an
    /// agency received, is not its to send (its digest may be known where its
    /// bytes are not).
    pub fn uploaded_by(&self, owner: &str, d: &Digest) -> Result<bool, NodeError> {
        Ok(self
            .store
            .get(Space::Meta, &Self::uploaded_by_key(owner, d))?
            .is_some()
            && self.blobs.contains(d))
    }

    /// Counts streamed bytes, and those of them that were streamed before.
    pub fn count_streamed(&self, digest: &Digest, from: u64, to: u64) {
        let mut hwm = self.stream_hwm.lock().unwrap_or_else(|p| p.into_inner());
        let h = hwm.entry(*digest).or_insert(0);
        let resent = (*h).min(to).saturating_sub(from);
        *h = (*h).max(to);
        self.stats
            .stream_bytes_sent
            .fetch_add(to - from, Ordering::Relaxed);
        self.stats
            .stream_bytes_resent
            .fetch_add(resent, Ordering::Relaxed);
    }

    /// Whether this exact message is already stored here.
    pub fn is_duplicate(&self, v: &Verified) -> Result<bool, NodeError> {
        Ok(self
            .store
            .get(
                Space::Dedup,
                &doc_key(&v.from.to_string(), &v.doc_id.to_string()),
            )?
            .is_some_and(|d| d == v.header_sha256.0))
    }

    /// Whether a transfer that failed its checks here is a resend of a
    /// message this node already took, the same header bytes, for every one
    /// of `recipients`: a duplicate, acknowledged as on its first arrival,
    /// once the write that took it is durable (the ticket to wait for).
    /// The link lost the first acknowledgement; the signer's certificate has
    /// been revoked or has expired since, or its revocation list is stale
    /// here now. Refusing it would have its sender dead-letter (and tell its
    /// agency failed) a message that was passed on. Nothing is stored for it;
    /// the caller counts it once it answers it, with the kind given.
    pub fn taken_before(
        &self,
        header_bytes: &[u8],
        recipients: &[String],
        origin: &Origin,
    ) -> Result<Option<(Ticket, &'static str)>, NodeError> {
        let Ok(h) = pb::Header::decode(header_bytes) else {
            return Ok(None);
        };
        // Keyed as `accept` keys what it takes.
        let (Ok(from), Ok(doc_id)) = (envelope::sender_of(&h), h.doc_id.parse::<DocId>()) else {
            return Ok(None);
        };
        let key = doc_key(&from.to_string(), &doc_id.to_string());
        let hash = Digest::of(header_bytes);
        let asked: Vec<&str> = recipients.iter().map(String::as_str).collect();
        // Under the writer lock: the write that took it is then counted in
        // the ticket read after (it bumps the ticket before it lets go).
        let w = self.lock();
        let seen = self.store.get(Space::Dedup, &key)?;
        if seen.is_none_or(|seen| seen != hash.0)
            || !self.nothing_new(&Plan::default(), h.kind, &key, origin, Some(&asked))?
        {
            return Ok(None);
        }
        drop(w);
        Ok(Some((self.commit.current(), pb_kind_name(h.kind))))
    }

    /// Whether a message stored here before (same header bytes; record
    /// `key`), resent by the peer it first came from, asks this hop for
    /// nothing it was not taken for: a document's recipients all among those
    /// it was taken for (`plan_again` takes the others), any other kind
    /// always. Such a resend is a duplicate, whatever its checks (signature,
    /// sender's route) would say now. From another peer (a parent sending
    /// back down what a relay sent up) it is checked as any message.
    fn nothing_new(
        &self,
        plan: &Plan,
        kind: i32,
        key: &[u8],
        origin: &Origin,
        recipients: Option<&[&str]>,
    ) -> Result<bool, NodeError> {
        let Some(rec) = self.doc_record(plan, key)? else {
            return Ok(false);
        };
        if rec.origin != origin.label() {
            return Ok(false);
        }
        let (true, Some(asked)) = (kind == pb::Kind::Document as i32, recipients) else {
            return Ok(true);
        };
        Ok(rec.routed.is_empty() || asked.iter().all(|r| rec.routed.iter().any(|t| t == r)))
    }

    /// The queue entry at `seq`, if it is still queued.
    pub fn queue_entry(&self, queue: &str, seq: u64) -> Result<Option<QueueEntry>, NodeError> {
        let key = Key::new().str(queue).u64(seq).build();
        match self.store.get(Space::Queue, &key)? {
            Some(v) => Ok(Some(record::decode(Space::Queue, &key, &v)?)),
            None => Ok(None),
        }
    }

    /// Refuses to hand out attachments released after the retention period,
    /// saying so, rather than failing on a file that is gone.
    pub fn attachments_kept(&self, doc: &DocRecord, doc_id: &str) -> Result<(), NodeError> {
        if doc.released_at_ms == 0 {
            return Ok(());
        }
        Err(Refusal::new(
            Code::FailedPrecondition,
            format!(
                "the attachments of {doc_id} were released after the retention period \
                 (storage.retention_ms = {} ms); its envelope and receipts remain",
                self.storage.retention_ms
            ),
        )
        .into())
    }

    /// Digest and size of attachment `index` of a stored document.
    pub fn attachment_of(
        &self,
        from: &str,
        doc_id: &str,
        index: usize,
    ) -> Result<(Digest, u64, String), NodeError> {
        let (rec, h) = self.known_doc(from, doc_id)?.ok_or_else(|| {
            Refusal::not_found(format!("document {doc_id} from {from} is not stored here"))
        })?;
        self.attachments_kept(&rec, doc_id)?;
        let a = h.attachments.get(index).ok_or_else(|| {
            Refusal::not_found(format!("document {doc_id} has no attachment {index}"))
        })?;
        let d =
            Digest::from_slice(&a.sha256).ok_or_else(|| internal("stored attachment digest"))?;
        Ok((d, a.size, a.name.clone()))
    }

    pub fn is_connected(&self, child: &NodeId) -> bool {
        self.connected
            .lock()
            .map(|c| c.contains(child))
            .unwrap_or(false)
    }

    fn next_seq(&self, w: &mut Writer, plan: &mut Plan, name: &str) -> Result<u64, NodeError> {
        let meta_key = seq_key(name);
        let cur = match w.seqs.get(name) {
            Some(n) => *n,
            None => match self.store.get(Space::Meta, &meta_key)? {
                Some(v) => trailing_u64(&v).unwrap_or(0),
                None => 0,
            },
        };
        let next = cur + 1;
        w.seqs.insert(name.to_owned(), next);
        plan.seqs.insert(name.to_owned());
        Ok(next)
    }

    /// A count as the plan would leave it (the writer's lock held, `_w`).
    fn count(&self, _w: &Writer, plan: &Plan, key: &str) -> i64 {
        self.lock_counts().get(key).copied().unwrap_or(0) + plan.deltas.of(key)
    }

    /// Documents waiting in a queue.
    pub fn queue_depth(&self, queue: &str) -> u64 {
        self.lock_counts()
            .get(&format!("q:{queue}"))
            .copied()
            .unwrap_or(0)
            .max(0) as u64
    }

    /// Who may send `from` through `origin` (DESIGN invariant 3: identity is the
    /// certificate intersected with the directory; `from` alone is never trusted).
    fn authorize(&self, v: &Verified, origin: &Origin) -> Result<(), Refusal> {
        match (origin, &v.from) {
            (Origin::Local, Sender::Agency(o)) => {
                if !self.routing().is_local(o) {
                    return Err(Refusal::denied(format!(
                        "this node does not serve agency {o}"
                    )));
                }
            }
            (Origin::Local, Sender::Node(n)) => {
                if n != &self.node_id {
                    return Err(Refusal::denied(format!(
                        "node {} cannot sign for node {n}",
                        self.node_id
                    )));
                }
            }
            (Origin::Child(child), Sender::Agency(o)) => {
                if self.routing().child_of(o) != Some(child) {
                    return Err(Refusal::denied(format!(
                        "node {child} may not send from agency {o}: the directory does not bind it to {child}"
                    )));
                }
            }
            (Origin::Child(child), Sender::Node(n)) if v.kind == Kind::Directory && n == child => {}
            // A relay's own receipt (accepted, undeliverable) for a sender
            // outside its subtree goes up: it speaks only for recipients
            // served below it.
            (Origin::Child(child), Sender::Node(n))
                if v.kind == Kind::Receipt && (n == child || self.node_below(child, n)) =>
            {
                let routing = self.routing();
                let recipients = v.receipt.as_ref().map(|r| r.recipients.as_slice());
                if let Some(o) = recipients
                    .unwrap_or_default()
                    .iter()
                    .find(|o| routing.child_of(o) != Some(child))
                {
                    return Err(Refusal::denied(format!(
                        "node {n} may not sign a receipt for {o}, which is not served below {child}"
                    )));
                }
                if recipients.is_none_or(<[OrganId]>::is_empty) {
                    return Err(Refusal::denied(format!(
                        "node {n} signed a receipt for no recipient"
                    )));
                }
            }
            (Origin::Child(child), Sender::Node(n)) => {
                // Receipts signed by nodes travel from a parent down towards senders.
                return Err(Refusal::denied(format!(
                    "child {child} may not pass on a message signed by node {n}"
                )));
            }
            (Origin::Parent(parent), Sender::Agency(o)) => {
                if self.routing().is_local(o) || self.routing().child_of(o).is_some() {
                    return Err(Refusal::denied(format!(
                        "parent {parent} sent a message from {o}, which is served below this node"
                    )));
                }
            }
            (Origin::Parent(_), Sender::Node(_)) => {}
        }
        Ok(())
    }

    /// Accepts one message; see [`accept_batch`](Self::accept_batch).
    ///
    /// Messages of local agencies, submitted concurrently by many application
    /// requests, are accepted together: each waits for the writer, and whoever
    /// gets it writes every local message waiting by then in one batch (one set
    /// of sequence, counter and audit-head writes, one apply), and hands each its
    /// own verdict. A lone request is a batch of one, as before.
    pub fn accept(
        &self,
        v: Verified,
        origin: &Origin,
        recipients: Option<&[OrganId]>,
    ) -> Result<Accepted, NodeError> {
        let r = recipients.map(<[OrganId]>::to_vec);
        let (verdict, ticket) = if matches!(origin, Origin::Local) {
            self.accept_local(v, r)?
        } else {
            let (mut verdicts, ticket) = self.accept_batch(vec![(v, r)], origin)?;
            (
                verdicts.pop().ok_or_else(|| internal("empty batch"))?,
                ticket,
            )
        };
        match verdict {
            Verdict::Stored => Ok(Accepted::Stored(ticket)),
            Verdict::Duplicate => Ok(Accepted::Duplicate(ticket)),
            Verdict::Refused(r) => Err(r.into()),
            Verdict::Deferred(reason) => Err(Refusal::exhausted(reason).into()),
        }
    }

    fn accept_local(
        &self,
        v: Verified,
        recipients: Option<Vec<OrganId>>,
    ) -> Result<(Verdict, Ticket), NodeError> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(((v, recipients), tx));
        let w = self.lock();
        // Only the writer's holder takes waiting items, so a message is either
        // still waiting (and taken now) or taken by an earlier holder, which
        // sends its verdict once its batch is applied.
        if let Ok(done) = rx.try_recv() {
            return done;
        }
        let waiting = std::mem::take(&mut *self.local.lock().unwrap_or_else(|p| p.into_inner()));
        if waiting.is_empty() {
            drop(w);
        } else {
            let (items, senders): (Vec<_>, Vec<_>) = waiting.into_iter().unzip();
            match self.accept_locked(w, items, &Origin::Local, false) {
                Ok((verdicts, ticket)) => {
                    for (tx, verdict) in senders.iter().zip(verdicts) {
                        let _ = tx.send(Ok((verdict, ticket)));
                    }
                }
                Err(e) => {
                    // The whole batch failed to apply: each request hears why.
                    for (tx, e) in senders.iter().zip(e.for_each(senders.len())) {
                        let _ = tx.send(Err(e));
                    }
                }
            }
        }
        rx.recv()
            .map_err(|_| internal("the batch that took this message ended without a verdict"))?
    }

    /// Accepts many messages from one origin in one atomic write (two or more
    /// when a directory message is followed by others: what follows it is
    /// routed by it). `recipients` is
    /// the part of `to` this node is asked to serve (all of it when `None`): a peer
    /// forwards each recipient once, along one path. Each message is refused,
    /// deferred or accepted on its own; once one is deferred every later one is
    /// too, so that order per (from, to) holds. Every accepted one (new or
    /// duplicate) is durable once the returned ticket is; an error of the store
    /// fails the whole batch.
    pub fn accept_batch(
        &self,
        mut items: Vec<(Verified, Option<Vec<OrganId>>)>,
        origin: &Origin,
    ) -> Result<(Vec<Verdict>, Ticket), NodeError> {
        // A directory change reaches the routing table when its batch is
        // written: what follows it (a new agency's first document, the
        // same agency removed again) is planned after that, in a batch of
        // its own.
        if let Some(i) = items.iter().position(|(v, _)| v.kind == Kind::Directory)
            && i + 1 < items.len()
        {
            let rest = items.split_off(i + 1);
            let (mut verdicts, first) = self.accept_batch(items, origin)?;
            // In order from one peer: after a deferral, everything waits.
            if let Some(Verdict::Deferred(why)) =
                verdicts.iter().find(|v| matches!(v, Verdict::Deferred(_)))
            {
                let why = why.clone();
                verdicts.extend(rest.iter().map(|_| Verdict::Deferred(why.clone())));
                return Ok((verdicts, first));
            }
            let (more, second) = self.accept_batch(rest, origin)?;
            verdicts.extend(more);
            return Ok((verdicts, first.max(second)));
        }
        self.prefetch_for(&items);
        let w = self.lock();
        self.accept_locked(w, items, origin, true)
    }

    /// What accepting `items` reads first — each document's dedup entry and
    /// the reference counts of its blobs, mostly keys no one has written yet —
    /// asked of a store on a server in one request, before the writer lock,
    /// instead of one round trip per key under it. A failure only leaves those
    /// reads to ask one by one.
    fn prefetch_for(&self, items: &[(Verified, Option<Vec<OrganId>>)]) {
        // Built only if the store draws them (embedded stores do not).
        // (The record of a document sent again, which `plan_again` reads, is
        // not fetched ahead: resends are rare, and every new document would
        // pay a key for it.)
        let mut keys = items.iter().flat_map(|(v, _)| {
            let dedup = (
                Space::Dedup,
                doc_key(&v.from.to_string(), &v.doc_id.to_string()),
            );
            let blobs = v.attachments.iter().chain(&v.envelope_blob);
            std::iter::once(dedup).chain(blobs.map(|d| (Space::BlobRefs, d.0.to_vec())))
        });
        if let Err(e) = self.store.prefetch(&mut keys) {
            tracing::debug!(error = %e, "prefetch failed; the reads ask one by one");
        }
    }

    /// `accept_batch` with the writer held. With `ordered`, the first deferred
    /// message defers every later one (they come from one peer, in order);
    /// without, each is deferred on its own (independent local requests).
    fn accept_locked(
        &self,
        mut w: MutexGuard<'_, Writer>,
        items: Vec<(Verified, Option<Vec<OrganId>>)>,
        origin: &Origin,
        ordered: bool,
    ) -> Result<(Vec<Verdict>, Ticket), NodeError> {
        let now = now_ms();
        let mut plan = Plan::default();
        let mut verdicts: Vec<Verdict> = Vec::with_capacity(items.len());
        let mut deferred: Option<String> = None;
        for (v, recipients) in &items {
            if let Some(reason) = &deferred {
                verdicts.push(Verdict::Deferred(reason.clone()));
                continue;
            }
            let dkey = doc_key(&v.from.to_string(), &v.doc_id.to_string());
            let seen = match plan.fresh.iter().find(|(k, _)| *k == dkey) {
                Some((_, d)) => Some(d.to_vec()),
                None => self.store.get(Space::Dedup, &dkey)?,
            };
            // A resend of what was taken here, for nothing more: a duplicate
            // even where the sender's route would refuse it now (its agency
            // moved to another child since the ack was lost).
            // (Nothing is looked up for a message never seen here.)
            if seen.as_ref().is_some_and(|s| *s == v.header_sha256.0) {
                let asked: Option<Vec<&str>> = recipients
                    .as_ref()
                    .map(|rs| rs.iter().map(OrganId::as_str).collect());
                if self.nothing_new(&plan, v.header.kind, &dkey, origin, asked.as_deref())? {
                    verdicts.push(Verdict::Duplicate);
                    continue;
                }
            }
            if let Err(r) = self.authorize(v, origin) {
                verdicts.push(Verdict::Refused(r));
                continue;
            }
            if seen
                .as_ref()
                .is_some_and(|existing| *existing != v.header_sha256.0)
            {
                verdicts.push(Verdict::Refused(Refusal::new(
                    Code::AlreadyExists,
                    format!(
                        "doc_id {} was already used by {} for different content",
                        v.doc_id, v.from
                    ),
                )));
                continue;
            }
            let mark = plan.mark();
            let planned = match seen {
                None => self.plan_message(&mut w, &mut plan, v, origin, recipients.as_deref(), now),
                Some(_) => {
                    self.plan_again(&mut w, &mut plan, v, origin, recipients.as_deref(), now)
                }
            };
            match planned {
                Ok(Planned::Again(more)) => {
                    verdicts.push(Verdict::Stored);
                    self.count_delivered(&mut plan, v, &more, now);
                }
                Ok(Planned::Stored) => {
                    plan.fresh.push((dkey, v.header_sha256.0));
                    verdicts.push(Verdict::Stored);
                    if v.kind == Kind::Document {
                        let bytes: u64 = v.header.attachments.iter().map(|a| a.size).sum();
                        let e = plan
                            .daily
                            .entry((day_of(now), v.from.to_string(), "in"))
                            .or_default();
                        e.0 += 1;
                        e.1 += bytes;
                        self.count_delivered(
                            &mut plan,
                            v,
                            recipients.as_deref().unwrap_or(&v.to),
                            now,
                        );
                    }
                }
                Ok(Planned::Duplicate) => {
                    plan.rollback(mark);
                    verdicts.push(Verdict::Duplicate);
                }
                Err(NodeError::Refused(r)) => {
                    plan.rollback(mark);
                    plan.audit(
                        "refused",
                        &v.doc_id.to_string(),
                        &v.from.to_string(),
                        r.reason.clone(),
                    );
                    verdicts.push(Verdict::Refused(r));
                }
                Err(NodeError::Deferred(reason)) => {
                    plan.rollback(mark);
                    verdicts.push(Verdict::Deferred(reason.clone()));
                    if ordered {
                        deferred = Some(reason);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let ticket = if plan.batch.is_empty() && plan.audit.is_empty() {
            drop(w);
            self.commit.current()
        } else {
            self.finish(w, plan)?
        };
        for ((v, _), verdict) in items.iter().zip(&verdicts) {
            let (c, result) = match verdict {
                Verdict::Stored => (&self.stats.accepted, "stored"),
                Verdict::Duplicate => (&self.stats.duplicates, "duplicate"),
                Verdict::Refused(r) => {
                    // Local refusals are counted where the application hears them.
                    if !matches!(origin, Origin::Local) {
                        self.telemetry.refused("link", r.code);
                    }
                    (&self.stats.refused, "refused")
                }
                Verdict::Deferred(_) => (&self.stats.deferred, "deferred"),
            };
            c.fetch_add(1, Ordering::Relaxed);
            self.telemetry.document_in(kind_name(v.kind), result);
        }
        Ok((verdicts, ticket))
    }

    /// The day's statistics: a document delivered here to the local agencies
    /// among `served`.
    fn count_delivered(&self, plan: &mut Plan, v: &Verified, served: &[OrganId], now: i64) {
        let bytes: u64 = v.header.attachments.iter().map(|a| a.size).sum();
        let (day, routing) = (day_of(now), self.routing());
        for o in served.iter().filter(|o| routing.is_local(o)) {
            let e = plan
                .daily
                .entry((day.clone(), o.to_string(), "delivered"))
                .or_default();
            e.0 += 1;
            e.1 += bytes;
        }
    }

    fn finish(&self, mut w: MutexGuard<'_, Writer>, mut plan: Plan) -> Result<Ticket, NodeError> {
        for ((day, organ, dir), (docs, bytes)) in std::mem::take(&mut plan.daily) {
            let key = Key::new().str(&day).str(&organ).str(dir).build();
            let (d0, b0) = match self.store.get(Space::Stats, &key)? {
                Some(v) if v.len() == 16 => (
                    u64::from_be_bytes(v[..8].try_into().map_err(internal)?),
                    u64::from_be_bytes(v[8..].try_into().map_err(internal)?),
                ),
                _ => (0, 0),
            };
            let mut v = Vec::with_capacity(16);
            v.extend((d0 + docs).to_be_bytes());
            v.extend((b0 + bytes).to_be_bytes());
            plan.batch.put(Space::Stats, key, v);
        }
        for (key, rec) in plan.sent.take() {
            plan.batch.put(Space::Sent, key, record::encode(&rec));
        }
        for (key, e) in plan.inbox.take() {
            plan.batch.put(Space::Inbox, key, record::encode(&e));
        }
        for (key, d) in plan.docs.take() {
            plan.batch.put(Space::Docs, key, record::encode(&d));
        }
        for (d, n) in plan.refs.take() {
            if n == 0 {
                plan.batch.delete(Space::BlobRefs, d.0.to_vec());
            } else {
                plan.batch
                    .put(Space::BlobRefs, d.0.to_vec(), n.to_be_bytes().to_vec());
            }
        }
        for (from, n) in plan.held.take() {
            plan.batch
                .put(Space::Meta, Self::held_key(&from), n.to_be_bytes().to_vec());
        }
        let now = now_ms();
        let mut agency_events = Vec::new();
        let events = std::mem::take(&mut plan.events);
        for e in &events {
            let (business_type, target_doc_id) = match e {
                Event::Delivered {
                    business_type,
                    target,
                    ..
                } => (*business_type, target.clone()),
                _ => (0, String::new()),
            };
            let (organ, kind, doc_id, from, detail, subject, recipient) = match e {
                Event::Delivered {
                    organ,
                    from,
                    doc_id,
                    subject,
                    ..
                } => (
                    organ.to_string(),
                    "arrived",
                    doc_id.to_string(),
                    from.to_string(),
                    "document".to_owned(),
                    subject.clone(),
                    String::new(),
                ),
                Event::StatusArrived {
                    organ,
                    from,
                    doc_id,
                    code,
                    for_doc_id,
                } => (
                    organ.to_string(),
                    "arrived",
                    doc_id.to_string(),
                    from.to_string(),
                    format!("status {}", code.code()),
                    format!("about {for_doc_id}"),
                    String::new(),
                ),
                Event::StateChanged {
                    organ,
                    doc_id,
                    recipient,
                    state,
                } => (
                    organ.clone(),
                    "state",
                    doc_id.to_string(),
                    organ.clone(),
                    state.as_str().to_owned(),
                    String::new(),
                    recipient.to_string(),
                ),
                Event::Status {
                    organ,
                    doc_id,
                    recipient,
                    code,
                } => (
                    organ.clone(),
                    "status",
                    doc_id.to_string(),
                    recipient.to_string(),
                    code.code().to_owned(),
                    String::new(),
                    recipient.to_string(),
                ),
            };
            let Ok(o) = organ.parse::<OrganId>() else {
                continue;
            };
            if !self.routing().is_local(&o) {
                continue;
            }
            let id = self.next_seq(&mut w, &mut plan, "events")?;
            let ev = pb::AgencyEvent {
                id,
                at_ms: now,
                organ: organ.clone(),
                kind: kind.to_owned(),
                doc_id,
                from,
                detail,
                subject,
                recipient,
                business_type,
                target_doc_id,
            };
            plan.batch.put(
                Space::Events,
                Key::new().str(&organ).u64(id).build(),
                ev.encode_to_vec(),
            );
            agency_events.push(ev);
        }
        plan.events = events;
        let (seq, head) = audit::append(
            &mut plan.batch,
            (w.audit_seq, w.audit_head),
            now,
            std::mem::take(&mut plan.audit),
        );
        if seq != w.audit_seq {
            plan.batch.put(
                Space::Meta,
                audit::head_key(),
                audit::head_value(seq, &head),
            );
        }
        // Each sequence once per batch, at the last number drawn (numbers of
        // items rolled back are skipped, never reused).
        for name in std::mem::take(&mut plan.seqs) {
            if let Some(n) = w.seqs.get(&name) {
                plan.batch
                    .put(Space::Meta, seq_key(&name), n.to_be_bytes().to_vec());
            }
        }
        // Sequences handed out for a failed batch are simply skipped.
        let ticket = self.commit.apply(std::mem::take(&mut plan.batch))?;
        w.audit_seq = seq;
        w.audit_head = head;
        {
            let mut counts = self.lock_counts();
            for (k, d) in plan.deltas.take() {
                *counts.entry(k).or_default() += d;
            }
        }
        self.apply_directory(std::mem::take(&mut plan.directory));
        // Queued for announcement under the writer lock: in event id order.
        if !agency_events.is_empty() {
            self.undurable_events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_back((ticket, std::mem::take(&mut agency_events)));
        }
        drop(w);
        plan.queues.sort();
        plan.queues.dedup();
        for q in &plan.queues {
            self.notify_queue(q);
        }
        for e in plan.events {
            if matches!(e, Event::Delivered { .. }) {
                self.stats.delivered.fetch_add(1, Ordering::Relaxed);
            }
            let _ = self.events.send(e);
        }
        self.announce_when_durable(ticket);
        Ok(ticket)
    }

    /// Broadcasts the queued agency events of every batch up to `ticket` once it
    /// is durable, in id order.
    fn announce_when_durable(&self, ticket: Ticket) {
        let pending = self.undurable_events.clone();
        let tx = self.agency_events.clone();
        let durable_id = self.durable_event_id.clone();
        let release = move |upto: Ticket| {
            let mut q = pending.lock().unwrap_or_else(|p| p.into_inner());
            while q.front().is_some_and(|(t, _)| *t <= upto) {
                if let Some((_, evs)) = q.pop_front() {
                    for e in evs {
                        durable_id.fetch_max(e.id, Ordering::SeqCst);
                        let _ = tx.send(e);
                    }
                }
            }
        };
        let waiting = {
            let q = self
                .undurable_events
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            q.front().is_some_and(|(t, _)| *t <= ticket)
        };
        if !waiting {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let commit = self.commit.clone();
                rt.spawn(async move {
                    // A failed flush stops the node's writes; the events stay
                    // unannounced and are read from the store after a restart.
                    if commit.durable(ticket).await.is_ok() {
                        release(ticket);
                    }
                });
            }
            // Outside a runtime (unit tests driving the state directly).
            Err(_) => release(ticket),
        }
    }

    fn held_key(from: &str) -> Vec<u8> {
        Key::new().str("held").str(from).build()
    }

    /// Why `bytes` more attachments of `from`, which holds `held` here, would
    /// pass `quotas.max_agency_bytes`, if they would.
    fn over_agency_bytes(&self, from: &str, held: u64, bytes: u64) -> Option<String> {
        (held + bytes > self.quotas.max_agency_bytes).then(|| {
            format!(
                "{from} holds {held} bytes of attachments here; {bytes} more would pass quotas.max_agency_bytes ({})",
                self.quotas.max_agency_bytes
            )
        })
    }

    /// Attachment bytes held here for documents from `from`.
    fn held(&self, plan: &Plan, from: &str) -> Result<u64, NodeError> {
        if let Some(n) = plan.held.get(from) {
            return Ok(*n);
        }
        Ok(self
            .store
            .get(Space::Meta, &Self::held_key(from))?
            .and_then(|v| trailing_u64(&v))
            .unwrap_or(0))
    }

    /// Documents and bytes per day, agency and direction ("in": accepted here from
    /// the agency; "delivered": delivered here to it), newest day first.
    pub fn daily_stats(&self, days: usize) -> Result<Vec<DailyStat>, NodeError> {
        let mut out: Vec<DailyStat> = self
            .store
            .scan(Space::Stats, &[], None, usize::MAX)?
            .into_iter()
            .filter_map(|(k, v)| {
                let mut p = str_parts(&k, 3)?;
                let dir = p.pop()?;
                let organ = p.pop()?;
                let day = p.pop()?;
                (v.len() == 16).then(|| DailyStat {
                    day,
                    organ,
                    direction: dir,
                    documents: u64::from_be_bytes(v[..8].try_into().unwrap_or_default()),
                    bytes: u64::from_be_bytes(v[8..].try_into().unwrap_or_default()),
                })
            })
            .collect();
        let mut recent: Vec<String> = out.iter().map(|s| s.day.clone()).collect();
        recent.sort();
        recent.dedup();
        let keep: BTreeSet<String> = recent.into_iter().rev().take(days).collect();
        out.retain(|s| keep.contains(&s.day));
        out.sort_by(|a, b| {
            b.day
                .cmp(&a.day)
                .then(a.organ.cmp(&b.organ))
                .then(a.direction.cmp(&b.direction))
        });
        Ok(out)
    }

    /// Attachment bytes held here, per sending agency.
    pub fn held_bytes(&self) -> Result<Vec<(String, u64)>, NodeError> {
        let prefix = Key::new().str("held").build();
        Ok(self
            .store
            .scan(Space::Meta, &prefix, None, usize::MAX)?
            .into_iter()
            .filter_map(|(k, v)| {
                let from = str_parts(&k, 2)?.pop()?;
                Some((from, trailing_u64(&v)?))
            })
            .collect())
    }

    /// How many stored documents name blob `d`.
    fn refs(&self, plan: &Plan, d: &Digest) -> Result<u64, NodeError> {
        if let Some(n) = plan.refs.get(d) {
            return Ok(*n);
        }
        Ok(self
            .store
            .get(Space::BlobRefs, &d.0)?
            .and_then(|v| trailing_u64(&v))
            .unwrap_or(0))
    }

    /// How a new record keeps its envelope: `(inline bytes, blob digest)` —
    /// the blob, with a reference, when the caller stored it as one.
    fn plan_envelope(
        &self,
        plan: &mut Plan,
        v: &Verified,
    ) -> Result<(Vec<u8>, Vec<u8>), NodeError> {
        match v.envelope_blob {
            Some(d) => {
                self.plan_ref(plan, &d, "envelope")?;
                Ok((Vec::new(), d.0.to_vec()))
            }
            None => Ok((v.envelope.encode_to_vec(), Vec::new())),
        }
    }

    /// One more stored thing names blob `d`. It must still be on disk: a file
    /// released while the document was on its way is sent again by the peer.
    fn plan_ref(&self, plan: &mut Plan, d: &Digest, what: &str) -> Result<(), NodeError> {
        let n = self.refs(plan, d)?;
        if n == 0 && !self.blobs.contains(d) {
            return Err(NodeError::Other(format!(
                "{what} {d} is not on disk; retry"
            )));
        }
        plan.refs.insert(*d, n + 1);
        Ok(())
    }

    /// One stored thing less names blob `d`; nobody left: it goes to `doomed`,
    /// deleted once the batch is durable.
    fn plan_unref(
        &self,
        plan: &mut Plan,
        d: Digest,
        doomed: &mut Vec<Digest>,
    ) -> Result<(), NodeError> {
        let n = self.refs(plan, &d)?.saturating_sub(1);
        plan.refs.insert(d, n);
        if n == 0 {
            doomed.push(d);
        }
        Ok(())
    }

    fn doc_record(&self, plan: &Plan, key: &[u8]) -> Result<Option<DocRecord>, NodeError> {
        if let Some(d) = plan.docs.get(key) {
            return Ok(Some(d.clone()));
        }
        match self.store.get(Space::Docs, key)? {
            Some(bytes) => Ok(Some(record::decode(Space::Docs, key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// One queue entry of a document became `n`: each must be done (sent,
    /// refused) before its files' retention starts.
    fn plan_split(
        &self,
        plan: &mut Plan,
        from: &str,
        doc_id: &str,
        n: usize,
    ) -> Result<(), NodeError> {
        if n <= 1 {
            return Ok(());
        }
        let key = doc_key(from, doc_id);
        // Not counted (nothing to release), nothing to add.
        let Some(mut d) = self.doc_record(plan, &key)?.filter(|d| d.pending > 0) else {
            return Ok(());
        };
        d.pending = d.pending.saturating_add(n as u32 - 1);
        plan.docs.insert(key, d);
        Ok(())
    }

    /// One delivery of a document is done here (passed on, refused for good, or
    /// taken by the application); after the last, its attachments are scheduled
    /// for release after the retention period, and its envelope for removal
    /// after the envelope retention period.
    fn plan_done_once(
        &self,
        plan: &mut Plan,
        from: &str,
        doc_id: &str,
        now: i64,
    ) -> Result<(), NodeError> {
        let key = doc_key(from, doc_id);
        let Some(mut d) = self.doc_record(plan, &key)? else {
            return Ok(());
        };
        if d.pending == 0 {
            return Ok(());
        }
        d.pending -= 1;
        if d.pending == 0 {
            if d.bytes > 0 {
                let due = now.saturating_add(self.storage.retention_ms.min(i64::MAX as u64) as i64);
                plan.batch.put(
                    Space::Release,
                    release_key(due, from, doc_id, Held::Attachments),
                    Vec::new(),
                );
                d.attachments_due_ms = due;
            }
            if let Some(keep) = self.storage.envelope_retention_ms
                && d.kind == pb::Kind::Document as i32
            {
                let due = now.saturating_add(keep.min(i64::MAX as u64) as i64);
                plan.batch.put(
                    Space::Release,
                    release_key(due, from, doc_id, Held::Envelope),
                    Vec::new(),
                );
                d.envelope_due_ms = due;
            }
        }
        plan.docs.insert(key, d);
        Ok(())
    }

    /// Ends the retention of what is due: a document's attachments (their
    /// reference counts drop, and files nobody names any more are deleted once
    /// that is durable) or its signed envelope (emptied in its record, with any
    /// attachment still held). Under `keep_until_archived` a document not yet
    /// exported is kept and marked instead, and released when the export is
    /// told. Every removal and deferral is audited. Blocking.
    pub fn release_due(&self) -> Result<usize, NodeError> {
        let now = now_ms();
        let due = self.store.scan(Space::Release, &[], None, 1024)?;
        let due: Vec<Vec<u8>> = due
            .into_iter()
            .map(|(k, _)| k)
            .take_while(|k| k.len() >= 8 && trailing_u64(&k[..8]).is_some_and(|t| t as i64 <= now))
            .collect();
        if due.is_empty() {
            return Ok(0);
        }
        let w = self.lock();
        let mut plan = Plan::default();
        let mut doomed = Vec::new();
        let (mut released, mut removed, mut deferred) = (0u64, 0u64, 0u64);
        for k in &due {
            plan.batch.delete(Space::Release, k.clone());
            let Some(parts) = str_parts(&k[8..], 2) else {
                continue;
            };
            let what = match str_parts(&k[8..], 3) {
                Some(p) if p[2] == Held::Envelope.label() => Held::Envelope,
                _ => Held::Attachments,
            };
            let (from, doc_id) = (&parts[0], &parts[1]);
            let key = doc_key(from, doc_id);
            let Some(mut d) = self.doc_record(&plan, &key)? else {
                continue;
            };
            let gone = match what {
                Held::Attachments => d.released_at_ms != 0,
                Held::Envelope => d.envelope_removed_at_ms != 0,
            };
            // Gone already; or taken again (`plan_again`, a requeue) since
            // this was scheduled: due anew once those deliveries are done,
            // by a later schedule.
            let scheduled = trailing_u64(&k[..8]).unwrap_or(0) as i64;
            let latest = match what {
                Held::Attachments => d.attachments_due_ms,
                Held::Envelope => d.envelope_due_ms,
            };
            if gone || d.pending > 0 || scheduled < latest {
                continue;
            }
            // Kept until archived: marked, and released when the export is told.
            if self.storage.keep_until_archived
                && self
                    .store
                    .get(Space::Meta, &Self::archived_key(from, doc_id))?
                    .is_none()
            {
                plan.batch.put(
                    Space::Meta,
                    Self::deferred_key(from, doc_id, what),
                    Vec::new(),
                );
                plan.audit(
                    "retention-deferred",
                    doc_id,
                    from,
                    format!(
                        "retention period of its {} over; kept until the document is archived",
                        what.label()
                    ),
                );
                deferred += 1;
                continue;
            }
            if d.released_at_ms == 0 {
                self.plan_release_attachments(&mut plan, from, doc_id, &mut d, &mut doomed, now)?;
                released += u64::from(d.bytes > 0);
            }
            if what == Held::Envelope {
                removed += 1;
                let mut n = d.envelope.len() as u64;
                if let Some(digest) = Digest::from_slice(&d.envelope_sha256) {
                    n = self.blobs.size(&digest).unwrap_or(0);
                    self.plan_unref(&mut plan, digest, &mut doomed)?;
                }
                d.envelope = Vec::new();
                d.envelope_removed_at_ms = now;
                plan.audit(
                    "envelope-removed",
                    doc_id,
                    from,
                    format!(
                        "signed envelope ({n} bytes, header sha-256 {}) after the retention period; the record, receipts and statuses stay",
                        hex::encode(&d.header_sha256)
                    ),
                );
            }
            plan.docs.insert(key, d);
        }
        let ticket = self.finish(w, plan)?;
        futures::executor::block_on(self.durable(ticket))?;
        let s = &self.stats;
        s.retention_released.fetch_add(released, Ordering::Relaxed);
        s.retention_envelopes_removed
            .fetch_add(removed, Ordering::Relaxed);
        s.retention_deferred.fetch_add(deferred, Ordering::Relaxed);
        if released + removed + deferred > 0 {
            tracing::info!(
                attachments_released = released,
                envelopes_removed = removed,
                kept_until_archived = deferred,
                "retention sweep"
            );
        }
        // Under the writer lock: a document that names one of these again in the
        // meantime checks that its file is there, and nobody deletes it then.
        let _w = self.lock();
        for d in doomed {
            if self.refs(&Plan::default(), &d)? == 0 {
                self.blobs.remove(&d)?;
            }
        }
        Ok(due.len())
    }

    /// Drops a document's hold on its attachment files and on the edXML package
    /// it was imported from (audited when there were attachments); the files
    /// nobody names any more go to `doomed`.
    fn plan_release_attachments(
        &self,
        plan: &mut Plan,
        from: &str,
        doc_id: &str,
        d: &mut DocRecord,
        doomed: &mut Vec<Digest>,
        now: i64,
    ) -> Result<(), NodeError> {
        for digest in d
            .attachments
            .iter()
            .filter_map(|raw| Digest::from_slice(raw))
        {
            self.plan_unref(plan, digest, doomed)?;
        }
        if d.bytes > 0 {
            let held = self.held(plan, from)?;
            plan.held
                .insert(from.to_owned(), held.saturating_sub(d.bytes));
        }
        let okey = Self::original_key(from, doc_id);
        if let Some(raw) = self.store.get(Space::Meta, &okey)?
            && let Some(digest) = Digest::from_slice(&raw)
        {
            self.plan_unref(plan, digest, doomed)?;
            plan.batch.delete(Space::Meta, okey);
        }
        d.released_at_ms = now;
        if d.bytes > 0 {
            plan.audit(
                "released",
                doc_id,
                from,
                format!(
                    "{} bytes of attachments after the retention period",
                    d.bytes
                ),
            );
        }
        Ok(())
    }

    /// Removes audit entries older than `storage.audit_retention_ms` from the
    /// start of the chain, at most `max` at a time: the chain then starts after
    /// the last one removed (its number and hash kept as the anchor), and the
    /// removal is itself an entry naming that anchor. Under
    /// `keep_until_archived` it stops at the first entry about a document not
    /// yet exported (an archival package carries its entries). Returns how
    /// many were removed. Blocking.
    pub fn prune_audit(&self, max: usize) -> Result<usize, NodeError> {
        let Some(keep) = self.storage.audit_retention_ms else {
            return Ok(0);
        };
        self.prune_audit_before(
            now_ms().saturating_sub(keep.min(i64::MAX as u64) as i64),
            max,
        )
    }

    /// [`prune_audit`](Self::prune_audit) of the entries made before `cutoff`.
    fn prune_audit_before(&self, cutoff: i64, max: usize) -> Result<usize, NodeError> {
        let w = self.lock();
        let (base_seq, _) = audit::base(self.store.as_ref())?;
        let rows = self.store.scan(
            Space::Audit,
            &[],
            Some(&audit::entry_key(base_seq)),
            max.min(w.audit_seq.saturating_sub(base_seq) as usize),
        )?;
        let mut plan = Plan::default();
        let mut last: Option<record::AuditEntry> = None;
        let mut archived: HashMap<(String, String), bool> = HashMap::new();
        // Whole blocks go, the entries of a batch together: a block stays
        // when one of its entries must.
        'blocks: for (k, v) in rows {
            let entries = audit::decode_block(&k, &v)?;
            let Some(end) = entries.last() else {
                break;
            };
            if last.is_some() && (end.seq - base_seq) as usize > max {
                break;
            }
            for e in &entries {
                // The newest entry stays: the chain's head is never removed.
                if e.at_ms >= cutoff || e.seq >= w.audit_seq {
                    break 'blocks;
                }
                if self.storage.keep_until_archived && !e.doc_id.is_empty() {
                    let id = (e.from.clone(), e.doc_id.clone());
                    let kept = match archived.get(&id) {
                        Some(k) => *k,
                        None => {
                            let k = self.unarchived_document(&e.from, &e.doc_id)?;
                            archived.insert(id, k);
                            k
                        }
                    };
                    if kept {
                        break 'blocks;
                    }
                }
            }
            let key_seq = end.seq;
            for doc in audit::docs_named(&entries) {
                plan.batch
                    .delete(Space::AuditIndex, audit::index_key(doc, key_seq));
            }
            plan.batch.delete(Space::Audit, k);
            last = entries.into_iter().next_back();
        }
        let Some(last) = last else {
            return Ok(0);
        };
        let n = (last.seq - base_seq) as usize;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&last.hash);
        plan.batch.put(
            Space::Meta,
            audit::base_key(),
            audit::head_value(last.seq, &hash),
        );
        plan.audit(
            audit::PRUNED,
            "",
            "",
            format!(
                "entries {}–{} (until {}) removed after the retention period; {}",
                base_seq + 1,
                last.seq,
                day_of(last.at_ms),
                audit::anchor_text(last.seq, &hash)
            ),
        );
        let ticket = self.finish(w, plan)?;
        futures::executor::block_on(self.durable(ticket))?;
        self.stats
            .audit_entries_pruned
            .fetch_add(n as u64, Ordering::Relaxed);
        tracing::info!(
            entries = n,
            through = last.seq,
            "audit entries removed after the retention period"
        );
        Ok(n)
    }

    /// Whether `(from, doc_id)` names a document stored here that has not been
    /// exported as an archival package.
    fn unarchived_document(&self, from: &str, doc_id: &str) -> Result<bool, NodeError> {
        let Some(d) = self.doc_record(&Plan::default(), &doc_key(from, doc_id))? else {
            return Ok(false);
        };
        let kind = match d.kind {
            // Stored before records named their kind: the header says.
            0 => self
                .envelope_of(from, doc_id, &d)
                .ok()
                .and_then(|env| pb::Header::decode(env.header_bytes.as_slice()).ok())
                .map_or(pb::Kind::Document as i32, |h| h.kind),
            k => k,
        };
        Ok(kind == pb::Kind::Document as i32
            && self
                .store
                .get(Space::Meta, &Self::archived_key(from, doc_id))?
                .is_none())
    }

    /// Deletes blob files no document names and abandoned partial transfers, once
    /// older than `storage.orphan_grace_ms`. Blocking.
    pub fn sweep_orphans(&self) -> Result<usize, NodeError> {
        let grace = self.storage.orphan_grace_ms / 1000;
        let mut n = 0;
        let candidates: Vec<Digest> = self
            .blobs
            .list()?
            .into_iter()
            .filter(|(_, age)| *age >= grace)
            .map(|(d, _)| d)
            .collect();
        let _w = self.lock();
        let mut owners = Batch::new();
        for d in candidates {
            if self.refs(&Plan::default(), &d)? == 0 {
                self.blobs.remove(&d)?;
                n += 1;
                for (k, _) in
                    self.store
                        .scan(Space::Meta, &Self::uploaded_by_prefix(&d), None, usize::MAX)?
                {
                    owners.delete(Space::Meta, k);
                }
            }
        }
        if !owners.is_empty() {
            self.commit.apply(owners)?;
        }
        drop(_w);
        Ok(n + self.sweep_abandoned_partials(grace)?)
    }

    /// Partial files (an upload an application gave up on, a transfer whose
    /// document went away) not written for `grace` seconds, and their
    /// records. One being received is left alone: its claim is held while
    /// it is checked and removed.
    fn sweep_abandoned_partials(&self, grace: u64) -> Result<usize, NodeError> {
        let mut n = 0;
        for (name, age) in self.blobs.list_partials()? {
            if age < grace {
                continue;
            }
            let uploads = self.uploading.lock().unwrap_or_else(|p| p.into_inner());
            let partials = self.partials.lock().unwrap_or_else(|p| p.into_inner());
            let busy = match name.strip_prefix("upload-") {
                Some(id) => id
                    .parse::<uuid::Uuid>()
                    .is_ok_and(|id| uploads.contains_key(&id)),
                None => hex::decode(&name)
                    .ok()
                    .and_then(|b| Digest::from_slice(&b))
                    .is_some_and(|d| partials.contains_key(&d)),
            };
            if busy {
                continue;
            }
            self.clear_partial(&name)?;
            self.blobs.drop_partial(&name);
            tracing::info!(partial = %name, age_s = age, "abandoned partial file removed");
            n += 1;
        }
        Ok(n)
    }

    fn sent_record(&self, plan: &Plan, key: &[u8]) -> Result<Option<SentRecord>, NodeError> {
        if let Some(r) = plan.sent.get(key) {
            return Ok(Some(r.clone()));
        }
        match self.store.get(Space::Sent, key)? {
            Some(bytes) => Ok(Some(record::decode(Space::Sent, key, &bytes)?)),
            None => Ok(None),
        }
    }

    fn inbox_entry_at(&self, plan: &Plan, key: &[u8]) -> Result<Option<InboxEntry>, NodeError> {
        if let Some(e) = plan.inbox.get(key) {
            return Ok(Some(e.clone()));
        }
        match self.store.get(Space::Inbox, key)? {
            Some(bytes) => Ok(Some(record::decode(Space::Inbox, key, &bytes)?)),
            None => Ok(None),
        }
    }

    /// The inbox key of a document delivered to `organ`, if it was.
    fn inbox_key_of(
        &self,
        doc_id: &str,
        from: &str,
        organ: &str,
    ) -> Result<Option<Vec<u8>>, NodeError> {
        Ok(self
            .store
            .get(Space::InboxIndex, &inbox_index_key(doc_id, from, organ))?
            .and_then(|v| trailing_u64(&v))
            .map(|seq| Key::new().str(organ).u64(seq).build()))
    }

    /// The DocumentId of the edXML package the document (`from`, `doc_id`)
    /// was imported from, if it was and is still known here.
    pub fn package_document_id(&self, from: &str, doc_id: &str) -> Option<String> {
        let (_, header) = self.known_doc(from, doc_id).ok()??;
        crate::edxml::document_id_in(&header)
    }

    /// Whether a document (`from`, `doc_id`) is stored here.
    pub fn knows_doc(&self, from: &str, doc_id: &DocId) -> bool {
        self.store
            .get(Space::Docs, &doc_key(from, &doc_id.to_string()))
            .is_ok_and(|v| v.is_some())
    }

    /// A document this node stored, with its decoded header.
    fn known_doc(
        &self,
        from: &str,
        doc_id: &str,
    ) -> Result<Option<(DocRecord, pb::Header)>, NodeError> {
        let key = doc_key(from, doc_id);
        let Some(bytes) = self.store.get(Space::Docs, &key)? else {
            return Ok(None);
        };
        let rec: DocRecord = record::decode(Space::Docs, &key, &bytes)?;
        let env = self.envelope_of(from, doc_id, &rec)?;
        let header = pb::Header::decode(env.header_bytes.as_slice()).map_err(internal)?;
        Ok(Some((rec, header)))
    }

    /// Checks a revoke/update/replace or a status against the document it names,
    /// as far as this node knows it.
    fn check_against_target(
        &self,
        v: &Verified,
        to: &[OrganId],
    ) -> Result<Option<Planned>, NodeError> {
        if let (Some(target), Sender::Agency(sender)) = (&v.target, &v.from) {
            let t = target.to_string();
            if v.business == BusinessType::Revoke
                && self
                    .store
                    .get(
                        Space::Changes,
                        &change_key(sender.as_str(), &t, BusinessType::Revoke),
                    )?
                    .is_some()
            {
                // The same recall again, under another id: it reaches nobody twice.
                return Ok(Some(Planned::Duplicate));
            }
            let added: Vec<&OrganId> = v
                .changes
                .iter()
                .filter(|(_, a)| *a)
                .map(|(o, _)| o)
                .collect();
            match self.known_doc(sender.as_str(), &t)? {
                Some((_, h)) => {
                    for r in to {
                        if !h.to.iter().any(|x| x == r.as_str()) && !added.contains(&r) {
                            return Err(Refusal::denied(format!(
                                "{} of {t} goes to {r}, which did not receive {t}",
                                v.business.as_str()
                            ))
                            .into());
                        }
                    }
                    for (o, a) in &v.changes {
                        if !a && !h.to.iter().any(|x| x == o.as_str()) {
                            return Err(Refusal::invalid(format!(
                                "update removes {o}, which was not a recipient of {t}"
                            ))
                            .into());
                        }
                    }
                }
                None => {
                    // A hop that only serves, itself or below, agencies the
                    // update adds never saw the target: the original went
                    // elsewhere (an edge, a relay and its districts).
                    let routing = self.routing();
                    let all_added_here = v.business == BusinessType::Update
                        && to.iter().all(|r| {
                            (routing.is_local(r) || routing.child_of(r).is_some())
                                && added.contains(&r)
                        });
                    if !all_added_here {
                        return Err(Refusal::denied(format!(
                            "{} names document {t}, which {sender} did not send through this node",
                            v.business.as_str()
                        ))
                        .into());
                    }
                }
            }
        }
        if let (Some(st), Sender::Agency(sender)) = (&v.status, &v.from) {
            let d = st.for_doc_id.to_string();
            let Some((rec, h)) = self.known_doc(st.for_from.as_str(), &d)? else {
                return Err(Refusal::not_found(format!(
                    "status {} is about document {d} from {}, which is not known here",
                    st.code.code(),
                    st.for_from
                ))
                .into());
            };
            if rec.header_sha256 != st.envelope_sha256.0 {
                return Err(Refusal::invalid(format!(
                    "status about {d} names other envelope bytes than {d} has"
                ))
                .into());
            }
            if st.code.from_original_sender() {
                for r in to {
                    if !h.to.iter().any(|x| x == r.as_str()) {
                        return Err(Refusal::denied(format!("{r} did not receive {d}")).into());
                    }
                }
            } else if !h.to.iter().any(|x| x == sender.as_str()) {
                return Err(Refusal::denied(format!(
                    "{sender} sends a status about {d}, which it never received"
                ))
                .into());
            }
        }
        Ok(None)
    }

    fn plan_message(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        v: &Verified,
        origin: &Origin,
        recipients: Option<&[OrganId]>,
        now: i64,
    ) -> Result<Planned, NodeError> {
        if v.kind == Kind::Directory {
            return self.plan_directory_message(w, plan, v, origin, now);
        }
        let to = recipients.unwrap_or(&v.to);
        in_signed_list(v, to)?;
        if let Some(p) = self.check_against_target(v, to)? {
            return Ok(p);
        }
        let routes = self.plan_routes(w, plan, v, origin, to)?;
        let from_key = v.from.to_string();
        let doc_id = v.doc_id.to_string();
        let dkey = doc_key(&from_key, &doc_id);
        let bytes: u64 = v.header.attachments.iter().map(|a| a.size).sum();
        let counted = self.counts_pending(v, bytes);
        let pending = if counted {
            Self::deliveries(v, &routes)
        } else {
            0
        };
        if bytes > 0 {
            // The files stay while anyone here still has to pass them on or hand
            // them to an application; then for the retention period.
            let held = self.held(plan, &from_key)?;
            if let Some(why) = self.over_agency_bytes(&from_key, held, bytes) {
                return Err(match origin {
                    Origin::Local => Refusal::exhausted(why).into(),
                    _ => NodeError::Deferred(why),
                });
            }
            plan.held.insert(from_key.clone(), held + bytes);
            for d in &v.attachments {
                self.plan_ref(plan, d, "attachment")?;
            }
        }
        let (envelope, envelope_sha256) = self.plan_envelope(plan, v)?;
        plan.docs.insert(
            dkey.clone(),
            DocRecord {
                envelope,
                envelope_sha256,
                header_sha256: v.header_sha256.0.to_vec(),
                origin: origin.label(),
                received_at_ms: now,
                attachments: v.attachments.iter().map(|d| d.0.to_vec()).collect(),
                signer: v.signer.clone(),
                pending,
                bytes,
                kind: v.header.kind,
                routed: match v.kind {
                    Kind::Document => to.iter().map(ToString::to_string).collect(),
                    _ => Vec::new(),
                },
                pending_counted: counted,
                ..Default::default()
            },
        );
        plan.batch
            .put(Space::Dedup, dkey, v.header_sha256.0.to_vec());
        let what = match (&v.kind, &v.status, &v.receipt) {
            (Kind::Document, _, _) if v.business != BusinessType::New => {
                v.business.as_str().to_owned()
            }
            (Kind::Document, _, _) => "document".to_owned(),
            (Kind::Status, Some(s), _) => {
                format!("status {} about {}", s.code.code(), s.for_doc_id)
            }
            (Kind::Receipt, _, Some(r)) => {
                format!("{} receipt for {}", r.kind.as_str(), r.for_doc_id)
            }
            _ => "message".to_owned(),
        };
        plan.audit(
            if *origin == Origin::Local {
                "submitted"
            } else {
                "received"
            },
            &doc_id,
            &from_key,
            format!("{what} from {}", origin.label()),
        );
        if let (Some(target), Some(sender)) = (&v.target, v.from.agency()) {
            plan.batch.put(
                Space::Changes,
                change_key(sender.as_str(), &target.to_string(), v.business),
                doc_id.clone().into_bytes(),
            );
        }

        if let (Origin::Local, Kind::Document, Some(sender)) = (origin, v.kind, v.from.agency()) {
            plan.batch.put(
                Space::SentIndex,
                sent_index_key(sender.as_str(), v.header.created_at_ms, &doc_id),
                Vec::new(),
            );
            plan.sent.insert(
                sent_key(&doc_id, sender.as_str()),
                SentRecord {
                    doc_id: doc_id.clone(),
                    from: sender.to_string(),
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
                            ..Default::default()
                        })
                        .collect(),
                    business_type: v.business as i32,
                    target_doc_id: v.target.map(|t| t.to_string()).unwrap_or_default(),
                    priority: v.header.priority,
                    due_at_ms: v.header.due_at_ms,
                },
            );
        }
        if let (Origin::Local, Some(st), Some(replier)) = (origin, &v.status, v.from.agency()) {
            self.plan_replied(plan, st, replier)?;
        }

        self.plan_take(w, plan, v, origin, to, routes, now)?;
        Ok(Planned::Stored)
    }

    /// A document stored here before, sent again: a resend (the link lost an
    /// acknowledgement) is a duplicate, but one that asks this hop to serve
    /// recipients it was not taken for yet (their agencies moved below this
    /// node since, and the sender requeued or rerouted it) is taken for them:
    /// queued or delivered as on its first arrival, with its proof. Records
    /// from before the recipients were kept are duplicates, as they were.
    fn plan_again(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        v: &Verified,
        origin: &Origin,
        recipients: Option<&[OrganId]>,
        now: i64,
    ) -> Result<Planned, NodeError> {
        let (Kind::Document, Some(asked)) = (v.kind, recipients) else {
            return Ok(Planned::Duplicate);
        };
        let (from_key, doc_id) = (v.from.to_string(), v.doc_id.to_string());
        let dkey = doc_key(&from_key, &doc_id);
        let Some(mut rec) = self.doc_record(plan, &dkey)? else {
            return Ok(Planned::Duplicate);
        };
        let more: Vec<OrganId> = asked
            .iter()
            .filter(|o| !rec.routed.iter().any(|r| r == o.as_str()))
            .cloned()
            .collect();
        if rec.routed.is_empty() || more.is_empty() {
            return Ok(Planned::Duplicate);
        }
        in_signed_list(v, &more)?;
        let names = more
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        // Its attachments or envelope are gone here: nothing to pass on.
        if rec.released_at_ms != 0 || rec.envelope_removed_at_ms != 0 {
            return Err(Refusal::new(
                Code::FailedPrecondition,
                format!(
                    "{doc_id} from {from_key} was taken here before and its stored bytes have since been released: it cannot be passed on to {names}; send it again under a new doc_id"
                ),
            )
            .into());
        }
        let routes = self.plan_routes(w, plan, v, origin, &more)?;
        // Counted as on its first arrival, whatever the configuration now.
        if rec.pending_counted {
            rec.pending += Self::deliveries(v, &routes);
        }
        rec.routed.extend(more.iter().map(ToString::to_string));
        plan.docs.insert(dkey, rec);
        plan.audit(
            "received",
            &doc_id,
            &from_key,
            format!("document again from {}, for {names}", origin.label()),
        );
        self.plan_take(w, plan, v, origin, &more, routes, now)?;
        Ok(Planned::Again(more))
    }

    /// A hub or relay proves it has taken a document for `to` with a signed
    /// receipt; then the message goes on along `routes`.
    #[allow(clippy::too_many_arguments)] // the parts of one planned write
    fn plan_take(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        v: &Verified,
        origin: &Origin,
        to: &[OrganId],
        routes: BTreeMap<Destination, Vec<OrganId>>,
        now: i64,
    ) -> Result<(), NodeError> {
        if let (Origin::Child(_), Kind::Document, Some(sender)) = (origin, v.kind, v.from.agency())
            && self.node_signer.is_some()
        {
            let spec = ReceiptSpec {
                kind: ReceiptType::Accepted,
                for_from: sender,
                for_doc_id: &v.doc_id,
                envelope_sha256: &v.header_sha256,
                recipients: to,
                detail: "",
            };
            self.plan_new_receipt(w, plan, &Sender::Node(self.node_id.clone()), &spec, now)?;
        }
        self.plan_forward(w, plan, v, routes, now)
    }

    /// Where `to` goes from here, once backpressure allows it: refused when a
    /// recipient is unknown or a parent sends what is not below this node,
    /// deferred (or, from a local agency, refused for now) when a queue is full.
    fn plan_routes(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        v: &Verified,
        origin: &Origin,
        to: &[OrganId],
    ) -> Result<BTreeMap<Destination, Vec<OrganId>>, NodeError> {
        let routes = self.routing().route(to).map_err(|e| match e {
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
        let from_key = v.from.to_string();
        // Backpressure before anything is written.
        if matches!(v.kind, Kind::Document | Kind::Status) {
            if let (Origin::Local, Some(_)) = (origin, routes.get(&Destination::Parent)) {
                let waiting = self.count(w, plan, "q:parent");
                if waiting as u64 >= self.quotas.max_outbox {
                    return Err(Refusal::exhausted(format!(
                        "outbox full: {waiting} documents wait for the parent (quotas.max_outbox); retry in {} ms",
                        self.quotas.retry_after_ms
                    ))
                    .into());
                }
            }
            if !matches!(origin, Origin::Local) {
                for (dest, rs) in &routes {
                    if !matches!(dest, Destination::Child(_)) {
                        continue;
                    }
                    for r in rs {
                        let n = self.count(w, plan, &format!("r:{r}"));
                        if n as u64 >= self.quotas.max_queued_per_recipient {
                            return Err(NodeError::Deferred(format!(
                                "queue for {r} is full: {n} documents wait (quotas.max_queued_per_recipient)"
                            )));
                        }
                    }
                    let n = self.count(w, plan, &format!("s:{from_key}"));
                    if n as u64 >= self.quotas.max_queued_per_sender {
                        return Err(NodeError::Deferred(format!(
                            "{from_key} has {n} documents waiting here (quotas.max_queued_per_sender)"
                        )));
                    }
                }
            }
        }

        Ok(routes)
    }

    /// Whether a message's deliveries are counted in its record's `pending`:
    /// where something is released when the last is done (attachments, and a
    /// document's envelope under an envelope retention). Off: no record
    /// rewritten per delivery.
    fn counts_pending(&self, v: &Verified, bytes: u64) -> bool {
        bytes > 0 || (v.kind == Kind::Document && self.storage.envelope_retention_ms.is_some())
    }

    /// The deliveries along `routes` that a message's stored bytes wait for
    /// here, when they are counted.
    fn deliveries(v: &Verified, routes: &BTreeMap<Destination, Vec<OrganId>>) -> u32 {
        routes
            .iter()
            .map(|(dest, rs)| match dest {
                Destination::Local if v.kind == Kind::Document => rs.len() as u32,
                Destination::Local => 0,
                _ => 1,
            })
            .sum()
    }

    /// Queues a message on each route towards a link, and hands it to each
    /// local recipient.
    fn plan_forward(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        v: &Verified,
        routes: BTreeMap<Destination, Vec<OrganId>>,
        now: i64,
    ) -> Result<(), NodeError> {
        for (dest, recipients) in routes {
            match queue_name(&dest) {
                Some(queue) => {
                    let child = matches!(dest, Destination::Child(_));
                    let mut deadline = 0;
                    if child && matches!(v.kind, Kind::Document | Kind::Status) {
                        deadline = now + self.delivery.deadline_for(v.header.priority) as i64;
                        if v.header.due_at_ms > now && v.header.due_at_ms < deadline {
                            deadline = v.header.due_at_ms;
                        }
                    }
                    let entry = QueueEntry {
                        from: v.from.to_string(),
                        doc_id: v.doc_id.to_string(),
                        recipients: recipients.iter().map(|o| o.to_string()).collect(),
                        enqueued_at_ms: now,
                        kind: v.header.kind,
                        priority: v.header.priority,
                        deadline_ms: deadline,
                    };
                    let note = format!("for {} on {queue}", entry.recipients.join(", "));
                    self.plan_enqueue(w, plan, queue, &entry, "queued", note)?;
                }
                None => {
                    for organ in recipients {
                        match (&v.kind, &v.receipt, &v.status) {
                            (Kind::Receipt, Some(r), _) => self.plan_receipt(plan, v, r, now)?,
                            (Kind::Status, _, Some(st)) => {
                                self.plan_status_arrival(w, plan, v, st, &organ, now)?
                            }
                            _ => self.plan_delivery(w, plan, v, &organ, now)?,
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// A local agency sent a status: remember it on its inbox entry; a 15 to a recall
    /// marks the recalled document.
    fn plan_replied(
        &self,
        plan: &mut Plan,
        st: &envelope::StatusFacts,
        replier: &OrganId,
    ) -> Result<(), NodeError> {
        let d = st.for_doc_id.to_string();
        let Some(key) = self.inbox_key_of(&d, st.for_from.as_str(), replier.as_str())? else {
            return Ok(());
        };
        let Some(mut e) = self.inbox_entry_at(plan, &key)? else {
            return Ok(());
        };
        e.replied = st.code.code().to_owned();
        if st.code == StatusCode::AcceptsChange
            && e.business_type == BusinessType::Revoke as i32
            && let Some(tkey) = self.inbox_key_of(&e.target_doc_id, &e.from, replier.as_str())?
            && let Some(mut t) = self.inbox_entry_at(plan, &tkey)?
        {
            t.recalled = true;
            plan.inbox.insert(tkey, t);
        }
        plan.inbox.insert(key, e);
        Ok(())
    }

    fn new_inbox_entry(v: &Verified, organ: &OrganId, now: i64) -> InboxEntry {
        let (kind, code, for_doc, note) = match &v.status {
            Some(s) => (
                "status",
                s.code.code().to_owned(),
                s.for_doc_id.to_string(),
                s.note.clone(),
            ),
            None => (
                "document",
                String::new(),
                String::new(),
                v.header.reason.clone(),
            ),
        };
        InboxEntry {
            from: v.from.to_string(),
            doc_id: v.doc_id.to_string(),
            organ: organ.to_string(),
            subject: v.header.subject.clone(),
            received_at_ms: now,
            priority: v.header.priority,
            code_number: v.header.code_number.clone(),
            code_notation: v.header.code_notation.clone(),
            attachments: v.attachments.len() as u32,
            kind: kind.into(),
            status_code: code,
            for_doc_id: for_doc,
            note,
            business_type: v.business as i32,
            target_doc_id: v.target.map(|t| t.to_string()).unwrap_or_default(),
            ..Default::default()
        }
    }

    fn plan_inbox(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        v: &Verified,
        organ: &OrganId,
        now: i64,
    ) -> Result<(), NodeError> {
        let seq = self.next_seq(w, plan, &format!("inbox:{organ}"))?;
        let doc_id = v.doc_id.to_string();
        let key = Key::new().str(organ.as_str()).u64(seq).build();
        let entry = Self::new_inbox_entry(v, organ, now);
        plan.deltas.push((format!("u:{organ}:{}", entry.kind), 1));
        if entry.kind == "status" && !entry.for_doc_id.is_empty() {
            plan.batch.put(
                Space::InboxIndex,
                status_index_key(&entry.for_doc_id, organ.as_str(), seq),
                Vec::new(),
            );
        }
        plan.inbox.insert(key, entry);
        plan.batch.put(
            Space::InboxIndex,
            inbox_index_key(&doc_id, &v.from.to_string(), organ.as_str()),
            seq.to_be_bytes().to_vec(),
        );
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
        let Sender::Agency(sender) = &v.from else {
            return Err(Refusal::invalid("only agencies send documents").into());
        };
        if let Some(target) = &v.target {
            let t = target.to_string();
            let had = self.inbox_key_of(&t, sender.as_str(), organ.as_str())?;
            let added = v.changes.iter().any(|(o, a)| *a && o == organ);
            if had.is_none() && !added {
                return Err(Refusal::not_found(format!(
                    "{} of {t}: {organ} never received {t} from {sender}",
                    v.business.as_str()
                ))
                .into());
            }
            if let (BusinessType::Revoke, Some(key)) = (v.business, had)
                && let Some(mut e) = self.inbox_entry_at(plan, &key)?
            {
                e.recall_requested = true;
                plan.inbox.insert(key, e);
            }
        }
        self.plan_inbox(w, plan, v, organ, now)?;
        plan.audit(
            "delivered",
            &v.doc_id.to_string(),
            sender.as_str(),
            format!("to {organ}"),
        );
        plan.events.push(Event::Delivered {
            organ: organ.clone(),
            from: sender.clone(),
            doc_id: v.doc_id,
            subject: v.header.subject.clone(),
            pdfs: v.header.attachments.iter().any(is_pdf),
            business_type: v.header.business_type,
            target: v.header.target_doc_id.clone(),
        });
        let spec = ReceiptSpec {
            kind: ReceiptType::Delivered,
            for_from: sender,
            for_doc_id: &v.doc_id,
            envelope_sha256: &v.header_sha256,
            recipients: std::slice::from_ref(organ),
            detail: "",
        };
        self.plan_new_receipt(w, plan, &Sender::Agency(organ.clone()), &spec, now)
    }

    /// A status reached a local agency: the original sender learns how a recipient
    /// handles its document; a recipient learns of a recall request (13).
    fn plan_status_arrival(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        v: &Verified,
        st: &envelope::StatusFacts,
        organ: &OrganId,
        now: i64,
    ) -> Result<(), NodeError> {
        let Sender::Agency(sender) = &v.from else {
            return Err(Refusal::invalid("only agencies send statuses").into());
        };
        let d = st.for_doc_id.to_string();
        if st.code.from_original_sender() {
            let Some(key) = self.inbox_key_of(&d, st.for_from.as_str(), organ.as_str())? else {
                return Err(Refusal::not_found(format!(
                    "{organ} never received {d} from {}",
                    st.for_from
                ))
                .into());
            };
            if let Some(mut e) = self.inbox_entry_at(plan, &key)? {
                e.recall_requested = true;
                plan.inbox.insert(key, e);
            }
        } else {
            let key = sent_key(&d, organ.as_str());
            let Some(mut rec) = self.sent_record(plan, &key)? else {
                return Err(Refusal::not_found(format!(
                    "no document {d} was sent by {organ} from this node"
                ))
                .into());
            };
            let Some(rr) = rec
                .recipients
                .iter_mut()
                .find(|r| r.organ == sender.as_str())
            else {
                return Err(Refusal::denied(format!("{sender} was not a recipient of {d}")).into());
            };
            rr.last_status = st.code.code().to_owned();
            rr.last_status_at_ms = now;
            rr.status_note = st.note.clone();
            plan.events.push(Event::Status {
                organ: organ.to_string(),
                doc_id: st.for_doc_id,
                recipient: sender.clone(),
                code: st.code,
            });
            // An answer to a recall, update or replace also shows on the document it changes.
            if st.code.answers_change()
                && rec.business_type != BusinessType::New as i32
                && !rec.target_doc_id.is_empty()
            {
                let tkey = sent_key(&rec.target_doc_id, organ.as_str());
                if let Some(mut target) = self.sent_record(plan, &tkey)?
                    && let Some(tr) = target
                        .recipients
                        .iter_mut()
                        .find(|r| r.organ == sender.as_str())
                {
                    let business = BusinessType::from_i32(rec.business_type)
                        .map(|b| b.as_str())
                        .unwrap_or("change");
                    tr.last_status = st.code.code().to_owned();
                    tr.last_status_at_ms = now;
                    tr.status_note = format!("on {business} {d}: {}", st.code.meaning());
                    plan.sent.insert(tkey, target);
                }
            }
            plan.sent.insert(key, rec);
        }
        self.plan_inbox(w, plan, v, organ, now)?;
        plan.events.push(Event::StatusArrived {
            organ: organ.clone(),
            from: sender.clone(),
            doc_id: v.doc_id,
            code: st.code,
            for_doc_id: st.for_doc_id,
        });
        plan.audit(
            "status",
            &d,
            sender.as_str(),
            format!("{} ({}) to {organ}", st.code.code(), st.code.meaning()),
        );
        Ok(())
    }

    fn plan_new_receipt(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        signer: &Sender,
        spec: &ReceiptSpec<'_>,
        now: i64,
    ) -> Result<(), NodeError> {
        let key = match signer {
            Sender::Agency(o) => self.signers.get(o),
            Sender::Node(_) => self.node_signer.as_ref(),
        }
        .ok_or_else(|| NodeError::Other(format!("no signing key for {signer}")))?;
        let header = envelope::receipt_header(signer, spec, now);
        let sealed = envelope::seal(&header, key)?;
        let receipt = Verified {
            header_sha256: Digest::of(&sealed.header_bytes),
            envelope: sealed,
            doc_id: header.doc_id.parse().map_err(internal)?,
            kind: Kind::Receipt,
            from: signer.clone(),
            to: vec![spec.for_from.clone()],
            signer: signer.to_string(),
            attachments: Vec::new(),
            business: BusinessType::New,
            target: None,
            changes: Vec::new(),
            receipt: Some(envelope::ReceiptFacts {
                kind: spec.kind,
                for_from: spec.for_from.clone(),
                for_doc_id: *spec.for_doc_id,
                envelope_sha256: *spec.envelope_sha256,
                recipients: spec.recipients.to_vec(),
                at_ms: now,
                detail: spec.detail.to_owned(),
            }),
            status: None,
            directory: Vec::new(),
            header,
            envelope_blob: None,
        };
        self.stats.receipts.fetch_add(1, Ordering::Relaxed);
        self.plan_message(w, plan, &receipt, &Origin::Local, None, now)?;
        Ok(())
    }

    /// A receipt reached the sender's node: advance the recipients' states and keep
    /// the receipt with the sent document.
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
            tracing::error!(doc_id = %r.for_doc_id, signer = %v.from,
                "receipt acknowledges different envelope bytes than were sent; not counted");
            plan.audit(
                "receipt refused",
                &r.for_doc_id.to_string(),
                &v.from.to_string(),
                "names other envelope bytes",
            );
            return Ok(());
        }
        let concerned: Vec<String> = match &v.from {
            Sender::Agency(o) => vec![o.to_string()],
            Sender::Node(_) => r.recipients.iter().map(|o| o.to_string()).collect(),
        };
        let receipt_key = doc_key(&v.from.to_string(), &v.doc_id.to_string());
        let doc_id = r.for_doc_id;
        let sender_organ = rec.from.clone();
        let created_at_ms = rec.created_at_ms;
        for rr in rec
            .recipients
            .iter_mut()
            .filter(|x| concerned.contains(&x.organ))
        {
            match r.kind {
                ReceiptType::Accepted if rr.accepted_at_ms == 0 => rr.accepted_at_ms = r.at_ms,
                ReceiptType::Delivered => {
                    // Both ends on this node's clock (the receipt's own time
                    // is the recipient's: an edge running fast would raise
                    // the latency alert, one running slow hide delays).
                    if rr.delivered_at_ms == 0 && created_at_ms > 0 {
                        self.telemetry
                            .delivered_after((now - created_at_ms).max(0) as f64 / 1000.0);
                    }
                    rr.delivered_at_ms = r.at_ms
                }
                ReceiptType::Acked => rr.acked_at_ms = r.at_ms,
                ReceiptType::Undeliverable => rr.detail = format!("undeliverable: {}", r.detail),
                _ => {}
            }
            rr.receipts.push(receipt_key.clone());
            let old = state_of(rr);
            let new = old.advance(r.kind.into());
            if new != old {
                rr.state = new as u32;
                rr.updated_at_ms = now;
                if matches!(new, DeliveryState::Delivered | DeliveryState::Acked) {
                    rr.detail.clear();
                }
                plan.events.push(Event::StateChanged {
                    organ: sender_organ.clone(),
                    doc_id,
                    recipient: rr.organ.parse().map_err(internal)?,
                    state: new,
                });
            }
        }
        plan.audit(
            "receipt",
            &doc_id.to_string(),
            &v.from.to_string(),
            format!("{} for {}", r.kind.as_str(), concerned.join(", ")),
        );
        plan.sent.insert(key, rec);
        Ok(())
    }

    /// Whether `from` has sent something under `doc_id` (a retry, or a
    /// reuse `submit` refuses).
    fn submitted_before(&self, from: &str, doc_id: &str) -> Result<bool, NodeError> {
        Ok(self
            .store
            .get(Space::Dedup, &doc_key(from, doc_id))?
            .is_some())
    }

    /// How the document `from` sent under `doc_id` differs from `s`, a
    /// submission under the same doc_id: its business type and target, its
    /// subject, and (while its envelope is kept) its attachments by name and
    /// digest. None when they agree (a retry) or nothing is left to compare.
    fn reused_for_another(
        &self,
        from: &OrganId,
        doc_id: &DocId,
        s: &Submission,
    ) -> Result<Option<String>, NodeError> {
        let Some(rec) = self.sent_record(
            &Plan::default(),
            &sent_key(&doc_id.to_string(), from.as_str()),
        )?
        else {
            return Ok(None);
        };
        if rec.business_type != s.business_type || rec.target_doc_id != s.target_doc_id {
            return Ok(Some(format!(
                "a {} of {:?}",
                BusinessType::from_i32(rec.business_type).map_or("document", |b| b.as_str()),
                rec.target_doc_id
            )));
        }
        if rec.subject != s.subject {
            return Ok(Some(format!("subject {:?}", rec.subject)));
        }
        // The envelope may be gone (retention): then the subject is all
        // there is to compare.
        let Ok(env) = self.envelope_of_sent(&rec) else {
            return Ok(None);
        };
        let Ok(header) = pb::Header::decode(env.header_bytes.as_slice()) else {
            return Ok(None);
        };
        let sent: Vec<(&str, &[u8])> = header
            .attachments
            .iter()
            .map(|a| (a.name.as_str(), a.sha256.as_slice()))
            .collect();
        let given: Vec<(&str, Digest)> = s
            .attachments
            .iter()
            .map(|a| {
                let d = match &a.body {
                    Body::Inline(data) => Digest::of(data),
                    Body::Stored(d, _) => *d,
                };
                (a.name.as_str(), d)
            })
            .collect();
        let same = sent.len() == given.len()
            && sent
                .iter()
                .zip(&given)
                .all(|((n, d), (m, e))| n == m && *d == e.0.as_slice());
        Ok((!same).then(|| {
            let names: Vec<&str> = sent.iter().map(|(n, _)| *n).collect();
            format!("attachments {names:?} with other bytes or names")
        }))
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
        // Unless it was used for another document: said, not dropped.
        if self.submitted_before(from.as_str(), &doc_id.to_string())? {
            if let Some(differs) = self.reused_for_another(&from, &doc_id, &s)? {
                return Err(Refusal::new(
                    Code::AlreadyExists,
                    format!(
                        "doc_id {doc_id} of {from} was used for another document ({differs}): give this one a new doc_id (sending the same document again is a no-op)"
                    ),
                )
                .into());
            }
            return Ok((doc_id, Accepted::Duplicate(self.commit.current())));
        }
        if s.api_checks {
            check_send(s.business_type, &s.subject, s.due_at_ms, now_ms())?;
        }
        let business = BusinessType::from_i32(s.business_type).ok_or_else(|| {
            Refusal::invalid(format!("unknown business type {}", s.business_type))
        })?;
        let mut to = s.to.clone();
        let mut changes = Vec::new();
        for (o, added) in &s.changes {
            let organ: OrganId = o
                .parse()
                .map_err(|e| Refusal::invalid(format!("recipient change: {e}")))?;
            changes.push(pb::RecipientChange {
                organ: organ.to_string(),
                added: *added,
            });
        }
        if business != BusinessType::New {
            let target: DocId = s
                .target_doc_id
                .parse()
                .map_err(|e| Refusal::invalid(format!("target_doc_id: {e}")))?;
            let t = target.to_string();
            let Some(rec) = self.sent_record(&Plan::default(), &sent_key(&t, from.as_str()))?
            else {
                return Err(Refusal::denied(format!(
                    "{from} did not send {t} from this edge: only the original sender may {} it",
                    business.as_str()
                ))
                .into());
            };
            if business == BusinessType::Revoke
                && let Some(existing) = self.store.get(
                    Space::Changes,
                    &change_key(from.as_str(), &t, BusinessType::Revoke),
                )?
            {
                let id = String::from_utf8_lossy(&existing)
                    .parse::<DocId>()
                    .map_err(internal)?;
                return Ok((id, Accepted::Duplicate(self.commit.current())));
            }
            if to.is_empty() {
                // By default a change goes to everyone the document went to, adjusted
                // by an update's additions and removals.
                to = rec.recipients.iter().map(|r| r.organ.clone()).collect();
                for c in &changes {
                    if c.added && !to.contains(&c.organ) {
                        to.push(c.organ.clone());
                    }
                }
            }
        }
        if to.is_empty() {
            return Err(Refusal::invalid("no recipients").into());
        }
        let directory = self.directory();
        if directory.known() {
            for r in &to {
                let organ: OrganId = r
                    .parse()
                    .map_err(|e| Refusal::invalid(format!("to: {e}")))?;
                if directory.get(&organ).is_none() && !self.routing().is_local(&organ) {
                    return Err(Refusal::not_found(format!(
                        "unknown recipient {organ}: no agency of the directory has this code (`truc directory list`, GET /v1/directory)"
                    ))
                    .into());
                }
            }
        }
        if s.priority > 4 {
            return Err(Refusal::invalid(format!("priority {} is not 0-4", s.priority)).into());
        }
        if s.attachments.len() > self.limits.max_attachments {
            return Err(Refusal::over_limit(format!(
                "{} attachments exceed the limit of {} (limits.max_attachments)",
                s.attachments.len(),
                self.limits.max_attachments
            ))
            .into());
        }
        let mut total = 0u64;
        let mut manifest = Vec::with_capacity(s.attachments.len());
        let mut inline: Vec<(Digest, &[u8])> = Vec::new();
        for a in &s.attachments {
            truc_core::check_attachment_name(&a.name)
                .map_err(|e| Refusal::invalid(e.to_string()))?;
            envelope::check_content_type(&a.content_type).map_err(Refusal::invalid)?;
            let (digest, size) = match &a.body {
                Body::Inline(data) => (Digest::of(data), data.len() as u64),
                Body::Stored(d, size) => {
                    match self.blobs.size(d) {
                        Some(n) if n == *size => {}
                        Some(n) => {
                            let hint = if *size == 0 {
                                " (give the upload's size with its sha256)"
                            } else {
                                ""
                            };
                            return Err(Refusal::invalid(format!(
                                "attachment {:?}: the upload {d} has {n} bytes, not {size}{hint}",
                                a.name
                            ))
                            .into());
                        }
                        None => {
                            return Err(Refusal::not_found(format!(
                                "attachment {:?}: nothing was uploaded with sha-256 {d}",
                                a.name
                            ))
                            .into());
                        }
                    }
                    (*d, *size)
                }
            };
            if size > self.limits.max_attachment_bytes {
                return Err(Refusal::over_limit(format!(
                    "attachment {:?} is {size} bytes, over the limit of {} (limits.max_attachment_bytes)",
                    a.name, self.limits.max_attachment_bytes
                ))
                .into());
            }
            total += size;
            if let Body::Inline(data) = &a.body {
                inline.push((digest, data.as_slice()));
            }
            manifest.push(pb::AttachmentRef {
                name: a.name.clone(),
                content_type: if a.content_type.is_empty() {
                    "application/octet-stream".into()
                } else {
                    a.content_type.clone()
                },
                size,
                sha256: digest.0.to_vec(),
            });
        }
        if total > self.limits.max_document_bytes {
            return Err(Refusal::over_limit(format!(
                "attachments total {total} bytes, over the limit of {} per document (limits.max_document_bytes)",
                self.limits.max_document_bytes
            ))
            .into());
        }
        let header = pb::Header {
            format_version: envelope::FORMAT_VERSION,
            doc_id: doc_id.to_string(),
            kind: pb::Kind::Document as i32,
            from: from.to_string(),
            to,
            created_at_ms: now_ms(),
            business_type: business as i32,
            target_doc_id: s.target_doc_id.clone(),
            subject: s.subject,
            code_number: s.code_number,
            code_notation: s.code_notation,
            priority: s.priority,
            due_at_ms: s.due_at_ms,
            attachments: manifest,
            recipient_changes: changes,
            reason: s.reason,
            meta: s.meta,
            ..Default::default()
        };
        let sealed = envelope::seal(&header, &signer)?;
        // Checked like anyone's but for the signature we just made: an expired
        // signing certificate is refused here, at the source, not three hops later.
        let mut v = envelope::verify_own(sealed, &self.verifiers, &self.limits, UnixTime::now())?;
        // With attachments to write anyway, the envelope goes with them (one
        // group of syncs), before the record that names it.
        let env = (!inline.is_empty()).then(|| v.keep_envelope_as_blob());
        if let Some((d, bytes)) = &env {
            inline.push((*d, bytes.as_slice()));
        }
        let inline_bytes: u64 = inline.iter().map(|(_, d)| d.len() as u64).sum();
        self.blobs
            .check_space(inline_bytes, self.storage.min_free_bytes)?;
        // Before a byte is written: an agency over its quota must not fill the
        // disk with files that only the orphan sweep would remove. (`accept`
        // checks again, under the writer lock.)
        if total > 0
            && let Some(why) = self.over_agency_bytes(
                from.as_str(),
                self.held(&Plan::default(), from.as_str())?,
                total,
            )
        {
            return Err(Refusal::exhausted(why).into());
        }
        self.put_named_blobs(&inline)?;
        let accepted = self.accept(v, &Origin::Local, None)?;
        Ok((doc_id, accepted))
    }

    /// Stores blobs that records applied next through the group commit will
    /// name. Where the store keeps applied records non-durable until a flush
    /// (redb), they get no sync of their own: the flush syncs the packs first,
    /// under the store's write lock. Elsewhere (sled, PostgreSQL, which may
    /// persist a record on their own) they are synced before the record exists.
    pub fn put_named_blobs(&self, items: &[(Digest, &[u8])]) -> Result<(), NodeError> {
        if self.store.durable_only_at_flush() {
            self.blobs.put_many_unsynced(items)?;
        } else {
            self.blobs.put_many(items)?;
        }
        Ok(())
    }

    /// Signs and sends a business status about a document (blocking).
    pub fn reply(&self, r: Reply) -> Result<(DocId, Accepted), NodeError> {
        let code: StatusCode = r.code.parse().map_err(Refusal::invalid)?;
        let doc: DocId = r
            .doc_id
            .parse()
            .map_err(|e| Refusal::invalid(format!("doc_id: {e}")))?;
        let d = doc.to_string();
        let want_organ: Option<OrganId> = if r.organ.is_empty() {
            None
        } else {
            Some(
                r.organ
                    .parse()
                    .map_err(|e| Refusal::invalid(format!("organ: {e}")))?,
            )
        };
        let (replier, for_from, to, digest) = if code.from_original_sender() {
            // The sender named, or the one agency here that sent it.
            let Some(rec) = self.sent_by(&doc, want_organ.as_ref())?.pop() else {
                return Err(Refusal::denied(format!(
                    "status 13 comes from the original sender, and {d} was not sent from this edge"
                ))
                .into());
            };
            let sender: OrganId = rec.from.parse().map_err(internal)?;
            let to: Vec<String> = rec.recipients.iter().map(|r| r.organ.clone()).collect();
            (sender.clone(), sender, to, rec.header_sha256)
        } else {
            let from = if r.from.is_empty() {
                None
            } else {
                Some(
                    r.from
                        .parse::<OrganId>()
                        .map_err(|e| Refusal::invalid(format!("from: {e}")))?,
                )
            };
            let mut entries = self.inbox_entries(&doc, from.as_ref())?;
            entries.retain(|(_, e)| e.kind == "document");
            if let Some(o) = &want_organ {
                entries.retain(|(_, e)| e.organ == o.as_str());
            }
            let e = match entries.as_slice() {
                [] => {
                    return Err(Refusal::not_found(format!(
                        "no received document {d}{}: a status goes only about what an agency received",
                        want_organ.as_ref().map(|o| format!(" for {o}")).unwrap_or_default()
                    ))
                    .into());
                }
                [(_, e)] => e.clone(),
                _ => {
                    one_sender(&doc, entries.iter().map(|(_, e)| e))?;
                    return Err(Refusal::invalid(format!(
                        "{d} reached several agencies of this edge; name one with --organ"
                    ))
                    .into());
                }
            };
            if code.answers_change()
                && e.business_type == BusinessType::New as i32
                && !e.recall_requested
            {
                return Err(Refusal::invalid(format!(
                    "status {} answers a recall, update or replace; {d} is none and has no recall request",
                    code.code()
                ))
                .into());
            }
            // A recall is not a document to register, assign or finish: it
            // is accepted or refused (its arrival may be told).
            if e.business_type == BusinessType::Revoke as i32
                && !code.answers_change()
                && code.code() != "01"
            {
                return Err(Refusal::invalid(format!(
                    "status {} does not answer a recall: {d} recalls {}, accept it with 15 or refuse it with 16",
                    code.code(),
                    e.target_doc_id
                ))
                .into());
            }
            let sender: OrganId = e.from.parse().map_err(internal)?;
            let organ: OrganId = e.organ.parse().map_err(internal)?;
            let (rec, _) = self
                .known_doc(sender.as_str(), &d)?
                .ok_or_else(|| internal(format!("received {d} is not stored")))?;
            (
                organ,
                sender.clone(),
                vec![sender.to_string()],
                rec.header_sha256,
            )
        };
        let signer = self
            .signers
            .get(&replier)
            .ok_or_else(|| Refusal::denied(format!("this edge does not serve agency {replier}")))?
            .clone();
        let header = pb::Header {
            format_version: envelope::FORMAT_VERSION,
            doc_id: DocId::new_v7().to_string(),
            kind: pb::Kind::Status as i32,
            from: replier.to_string(),
            to,
            created_at_ms: now_ms(),
            status: Some(pb::Status {
                code: code.code().to_owned(),
                for_from: for_from.to_string(),
                for_doc_id: d,
                envelope_sha256: digest,
                note: r.note,
                staff: r.staff,
            }),
            meta: r.meta,
            ..Default::default()
        };
        let id: DocId = header.doc_id.parse().map_err(internal)?;
        let sealed = envelope::seal(&header, &signer)?;
        let v = envelope::verify_own(sealed, &self.verifiers, &self.limits, UnixTime::now())?;
        let accepted = self.accept(v, &Origin::Local, None)?;
        Ok((id, accepted))
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

    /// The signed envelope of a stored message (inline in its record, or a blob
    /// the record names), or why it is no longer here.
    pub fn envelope_of(
        &self,
        from: &str,
        doc_id: &str,
        d: &DocRecord,
    ) -> Result<pb::SignedEnvelope, NodeError> {
        if d.envelope_removed_at_ms != 0 {
            return Err(Refusal::new(
                Code::FailedPrecondition,
                format!(
                    "{from}/{doc_id}: its signed envelope and attachments were removed on {} at the end of their retention period (storage.envelope_retention_ms); its record, receipts, statuses and audit entries remain",
                    day_of(d.envelope_removed_at_ms)
                ),
            )
            .into());
        }
        let blob;
        let bytes = if !d.envelope.is_empty() {
            d.envelope.as_slice()
        } else {
            let digest = Digest::from_slice(&d.envelope_sha256).ok_or_else(|| {
                NodeError::Other(format!(
                    "stored envelope {from}/{doc_id}: the record names none"
                ))
            })?;
            blob = self.blobs.read(&digest)?;
            blob.as_slice()
        };
        pb::SignedEnvelope::decode(bytes)
            .map_err(|e| NodeError::Other(format!("stored envelope {from}/{doc_id}: {e}")))
    }

    fn load_doc(&self, from: &str, doc_id: &str) -> Result<DocRecord, NodeError> {
        let key = doc_key(from, doc_id);
        let bytes = self.store.get(Space::Docs, &key)?.ok_or_else(|| {
            NodeError::Other(format!("document {from}/{doc_id} is queued but not stored"))
        })?;
        Ok(record::decode(Space::Docs, &key, &bytes)?)
    }

    /// Builds the transfer for a queue entry (reads blobs: blocking IO). Attachments
    /// travel inline only when they total at most `inline_max` bytes; otherwise the
    /// peer asks for them (`Want`) and they are streamed.
    pub fn load_transfer(
        &self,
        seq: u64,
        entry: &QueueEntry,
        inline_max: u64,
    ) -> Result<pb::Transfer, NodeError> {
        let doc = self.load_doc(&entry.from, &entry.doc_id)?;
        let mut env = self.envelope_of(&entry.from, &entry.doc_id, &doc)?;
        if self.hooks.corrupt_forwarded_headers
            && let Some(b) = env.header_bytes.last_mut()
        {
            *b ^= 0x01;
        }
        let mut attachments = Vec::with_capacity(doc.attachments.len());
        let mut total = 0u64;
        for d in &doc.attachments {
            let digest =
                Digest::from_slice(d).ok_or_else(|| internal("stored digest is not 32 bytes"))?;
            total += self
                .blobs
                .size(&digest)
                .ok_or(truc_store::BlobError::Missing(digest))?;
        }
        if total <= inline_max {
            for d in &doc.attachments {
                let digest = Digest::from_slice(d)
                    .ok_or_else(|| internal("stored digest is not 32 bytes"))?;
                attachments.push(pb::AttachmentData {
                    sha256: d.clone(),
                    data: self.blobs.read(&digest)?,
                });
            }
        }
        Ok(pb::Transfer {
            seq,
            envelope: Some(env),
            attachments,
            recipients: entry.recipients.clone(),
        })
    }

    /// Puts `entry` at the end of `queue`, counted as [`Self::plan_dequeue`]
    /// uncounts it, with an audit line `event`: `note`.
    /// The shortest deadline of any priority: the deadline sweep stops early
    /// in a queue at the first entry enqueued less than this long ago.
    fn min_deadline_ms(&self) -> i64 {
        shortest_deadline(&self.delivery)
    }

    /// An entry whose deadline (a due date) is shorter than every priority's
    /// would be missed by the early-stopping sweep: the sweep reads every
    /// queue to its end once it is reached, the next time one falls due.
    fn note_short_deadline(&self, e: &QueueEntry, now: i64, min_deadline: i64) {
        if e.deadline_ms > now && short_deadline(e, min_deadline) {
            self.next_short_deadline
                .fetch_min(e.deadline_ms, Ordering::Relaxed);
        }
    }

    fn plan_enqueue(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        queue: String,
        entry: &QueueEntry,
        event: &str,
        note: String,
    ) -> Result<(), NodeError> {
        let seq = self.next_seq(w, plan, &queue)?;
        let min_deadline = self.min_deadline_ms();
        self.note_short_deadline(entry, entry.enqueued_at_ms, min_deadline);
        plan.batch.put(
            Space::Queue,
            Key::new().str(&queue).u64(seq).build(),
            record::encode(entry),
        );
        plan.deltas.push((format!("q:{queue}"), 1));
        if queue.starts_with("child:") {
            // Counted per queue: operators' reads go through a queue that
            // holds one to its end (`queue_snapshot`).
            if short_deadline(entry, min_deadline) {
                plan.deltas.push((format!("d:{queue}"), 1));
            }
            plan.deltas.push((format!("s:{}", entry.from), 1));
            for r in &entry.recipients {
                plan.deltas.push((format!("r:{r}"), 1));
            }
        }
        plan.audit(event, &entry.doc_id, &entry.from, note);
        plan.queues.push(queue);
        Ok(())
    }

    /// Where `entry`, waiting on `queue`, goes now that the directory sends
    /// some of its recipients elsewhere (an agency moved to another child):
    /// the queues and their recipients, or `None` while it is where it
    /// belongs, or when it cannot be routed from here at all (then it stays,
    /// to be refused or parked with its sender told). Never up to the parent:
    /// a relay's parent would refuse what it sent down (an agency that left
    /// the relay's subtree is the parent's to route).
    fn moved_to(&self, queue: &str, entry: &QueueEntry) -> Option<Vec<(String, Vec<OrganId>)>> {
        if entry.recipients.is_empty() {
            return None;
        }
        let recipients: Vec<OrganId> = entry
            .recipients
            .iter()
            .map(|r| r.parse().ok())
            .collect::<Option<_>>()?;
        let routes = self.routing().route(&recipients).ok()?;
        let routes: Vec<(String, Vec<OrganId>)> = routes
            .into_iter()
            .map(|(dest, to)| match dest {
                Destination::Parent => None,
                _ => Some((queue_name(&dest)?, to)),
            })
            .collect::<Option<_>>()?;
        (routes.iter().any(|(q, _)| q != queue)).then_some(routes)
    }

    /// Moves `entry` from `seq` on `queue` to the queues `routes` names. It
    /// keeps its deadline; it is new on its queues, so a deadline shorter
    /// than theirs has the sweep read them to the end.
    #[allow(clippy::too_many_arguments)]
    fn plan_reroute(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        queue: &str,
        seq: u64,
        entry: &QueueEntry,
        routes: Vec<(String, Vec<OrganId>)>,
        why: &str,
    ) -> Result<(), NodeError> {
        self.plan_dequeue(plan, queue, seq, entry);
        self.plan_split(plan, &entry.from, &entry.doc_id, routes.len())?;
        let now = now_ms();
        for (to_queue, to) in routes {
            let mut e = entry.clone();
            e.recipients = to.iter().map(|o| o.to_string()).collect();
            e.enqueued_at_ms = now;
            let note = format!(
                "for {} moved from {queue} to {to_queue}: {why}",
                e.recipients.join(", ")
            );
            tracing::warn!(doc_id = %e.doc_id, from = %e.from, recipients = ?e.recipients,
                from_queue = %queue, to_queue = %to_queue, why, "routed again: the directory moved its recipients");
            self.plan_enqueue(w, plan, to_queue, &e, "routed again", note)?;
        }
        Ok(())
    }

    /// Takes `entry` off `queue` at `seq`, uncounted as [`Self::plan_enqueue`]
    /// counted it.
    fn plan_dequeue(&self, plan: &mut Plan, queue: &str, seq: u64, entry: &QueueEntry) {
        plan.batch
            .delete(Space::Queue, Key::new().str(queue).u64(seq).build());
        plan.deltas.push((format!("q:{queue}"), -1));
        if queue.starts_with("child:") {
            if short_deadline(entry, self.min_deadline_ms()) {
                plan.deltas.push((format!("d:{queue}"), -1));
            }
            plan.deltas.push((format!("s:{}", entry.from), -1));
            for r in &entry.recipients {
                plan.deltas.push((format!("r:{r}"), -1));
            }
        }
    }

    /// The peer stored everything up to `upto`: drop those entries from `queue`.
    pub fn queue_ack(&self, queue: &str, upto: u64) -> Result<usize, NodeError> {
        let w = self.lock();
        let mut plan = Plan::default();
        let now = now_ms();
        let mut n = 0;
        let mut after = None;
        let mut kinds = Vec::new();
        // Acknowledged entries are the head of the queue, numbered upwards: only
        // as many as `upto` can cover are read (a long backlog behind them is
        // neither scanned nor decoded on every acknowledgement).
        let Some((head, _)) = self.queue_peek(queue, None, 1)?.pop() else {
            return Ok(0);
        };
        'scan: loop {
            let covered = upto.saturating_sub(after.unwrap_or(head.saturating_sub(1)));
            if covered == 0 {
                break;
            }
            let rows = self.queue_peek(queue, after, covered.min(256) as usize)?;
            if rows.is_empty() {
                break;
            }
            for (seq, entry) in rows {
                if seq > upto {
                    break 'scan;
                }
                after = Some(seq);
                self.plan_dequeue(&mut plan, queue, seq, &entry);
                self.plan_done_once(&mut plan, &entry.from, &entry.doc_id, now)?;
                n += 1;
                kinds.push(entry.kind);
                if entry.kind != pb::Kind::Receipt as i32 {
                    plan.audit(
                        "forwarded",
                        &entry.doc_id,
                        &entry.from,
                        format!("stored by {queue}"),
                    );
                }
                if queue == "parent" && entry.kind == pb::Kind::Document as i32 {
                    self.plan_state(&mut plan, &entry, DeliveryState::AtHub, "", now)?;
                }
            }
        }
        if n > 0 {
            self.finish(w, plan)?;
        }
        for k in kinds {
            self.telemetry.document_out(pb_kind_name(k), "acked");
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
        let sender_organ = rec.from.clone();
        // The hub's acceptance usually arrives before its link ack, which then
        // changes nothing: the record is not written again.
        let mut changed = false;
        for rr in rec
            .recipients
            .iter_mut()
            .filter(|r| entry.recipients.contains(&r.organ))
        {
            let old = state_of(rr);
            let new = old.advance(state);
            if !detail.is_empty() && new == state && rr.detail != detail {
                rr.detail = detail.to_owned();
                changed = true;
            }
            if new != old {
                changed = true;
                rr.state = new as u32;
                rr.updated_at_ms = now;
                plan.events.push(Event::StateChanged {
                    organ: sender_organ.clone(),
                    doc_id,
                    recipient: rr.organ.parse().map_err(internal)?,
                    state: new,
                });
            }
        }
        if changed {
            plan.sent.insert(key, rec);
        }
        Ok(())
    }

    /// The peer refused `seq` for good: keep it as a dead letter with the reason and
    /// mark the recipients failed for the sender to see. False when `seq` is
    /// no longer queued (dead-lettered here already, say), and nothing changes.
    pub fn queue_reject(
        &self,
        queue: &str,
        seq: u64,
        code: i32,
        reason: &str,
    ) -> Result<bool, NodeError> {
        self.dead_letter(queue, seq, code, reason, FailedAt::Peer)
    }

    /// This node cannot send `seq` at all (what it must read for it is gone or
    /// unreadable for good): the same dead letter as a peer's refusal, told
    /// as this node's failure, not the peer's.
    pub fn queue_unsendable(&self, queue: &str, seq: u64, reason: &str) -> Result<(), NodeError> {
        self.dead_letter(queue, seq, Code::DataLoss as i32, reason, FailedAt::Here)
            .map(|_| ())
    }

    fn dead_letter(
        &self,
        queue: &str,
        seq: u64,
        code: i32,
        reason: &str,
        at: FailedAt,
    ) -> Result<bool, NodeError> {
        let mut w = self.lock();
        let key = Key::new().str(queue).u64(seq).build();
        let Some(bytes) = self.store.get(Space::Queue, &key)? else {
            return Ok(false);
        };
        let entry: QueueEntry = record::decode(Space::Queue, &key, &bytes)?;
        let now = now_ms();
        let mut plan = Plan::default();
        let code_name = format!("{:?}", Code::from_i32(code));
        // What the sender hears (its notice), the audit line, and the
        // recipients' state.
        let (why, event, detail, note) = match at {
            FailedAt::Peer => (
                format!("refused by {queue}: {code_name}: {reason}"),
                "refused by peer",
                format!("{queue}: {code_name}: {reason}"),
                format!("{code_name}: {reason}"),
            ),
            FailedAt::Here => {
                let why = format!("cannot be sent from {} on {queue}: {reason}", self.node_id);
                (
                    why.clone(),
                    "cannot be sent",
                    format!("{queue}: {reason}"),
                    why,
                )
            }
        };
        // Refused by a child its recipients have left since it was queued:
        // they are served elsewhere now, and it goes there. (A document this
        // node cannot read would fail on any queue.)
        if let (FailedAt::Peer, Some(routes)) = (at, self.moved_to(queue, &entry)) {
            self.plan_reroute(&mut w, &mut plan, queue, seq, &entry, routes, &why)?;
            self.finish(w, plan)?;
            return Ok(true);
        }
        // A sender on this node sees the refusal on its sent record (below);
        // one elsewhere (a relay's district, a ministry beyond the hub) has
        // no record here and hears it as this node's signed notice.
        let local_sender = entry
            .from
            .parse::<OrganId>()
            .is_ok_and(|o| self.routing().is_local(&o));
        if !local_sender {
            self.plan_undeliverable(&mut w, &mut plan, &entry, &why, now)?;
        }
        self.plan_dequeue(&mut plan, queue, seq, &entry);
        self.plan_done_once(&mut plan, &entry.from, &entry.doc_id, now)?;
        plan.deltas.push((DEAD_COUNT.to_owned(), 1));
        plan.batch.put(
            Space::Dead,
            key,
            record::encode(&DeadEntry {
                entry: Some(entry.clone()),
                code,
                // Whose failure it was, as the sender hears it, for one of
                // this node's own; the peer's words for a refusal.
                reason: match at {
                    FailedAt::Peer => reason.to_owned(),
                    FailedAt::Here => why.clone(),
                },
                at_ms: now,
                here: matches!(at, FailedAt::Here),
            }),
        );
        plan.audit(event, &entry.doc_id, &entry.from, detail);
        self.plan_state(&mut plan, &entry, DeliveryState::Failed, &note, now)?;
        self.finish(w, plan)?;
        self.telemetry
            .document_out(pb_kind_name(entry.kind), "rejected");
        Ok(true)
    }

    /// The peer cannot take `seq` now: tell the sender of a local document why it waits.
    pub fn queue_deferred(
        &self,
        queue: &str,
        seq: u64,
        reason: &str,
        retry_after_ms: u32,
    ) -> Result<(), NodeError> {
        let key = Key::new().str(queue).u64(seq).build();
        // Under the writer lock, as `queue_reject`: another task may move the
        // entry to dead letters meanwhile (the link's attachment server).
        let w = self.lock();
        let Some(bytes) = self.store.get(Space::Queue, &key)? else {
            return Ok(());
        };
        let entry: QueueEntry = record::decode(Space::Queue, &key, &bytes)?;
        let mut plan = Plan::default();
        let detail = format!("deferred at {queue}: {reason}; trying again in {retry_after_ms} ms");
        let skey = sent_key(&entry.doc_id, &entry.from);
        if let Some(rec) = self.sent_record(&plan, &skey)?
            && rec
                .recipients
                .iter()
                .any(|r| entry.recipients.contains(&r.organ) && r.detail != detail)
        {
            let mut rec = rec;
            for rr in rec
                .recipients
                .iter_mut()
                .filter(|r| entry.recipients.contains(&r.organ))
            {
                rr.detail = detail.clone();
            }
            plan.sent.insert(skey, rec);
            plan.audit("deferred", &entry.doc_id, &entry.from, detail);
            self.finish(w, plan)?;
        }
        Ok(())
    }

    /// A document this node gives up on for `e`'s recipients: its sender,
    /// wherever it is, hears it as an undeliverable receipt signed by this
    /// node (receipts and statuses given up on are not answered). A notice
    /// that cannot be made (the envelope unreadable, the sender no longer
    /// routable, no node key) is an ERROR line, never a reason to keep the
    /// entry: the queue behind it must go on.
    fn plan_undeliverable(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        e: &QueueEntry,
        reason: &str,
        now: i64,
    ) -> Result<(), NodeError> {
        let mark = plan.mark();
        if let Err(err) = self.plan_undeliverable_notice(w, plan, e, reason, now) {
            // A store that fails fails the whole write anyway.
            if let NodeError::Store(
                truc_store::StoreError::Io(_) | truc_store::StoreError::Failed(_),
            ) = err
            {
                return Err(err);
            }
            plan.rollback(mark);
            tracing::error!(doc_id = %e.doc_id, from = %e.from, error = %err,
                "the sender cannot be sent an undeliverable notice; given up without one");
        }
        Ok(())
    }

    fn plan_undeliverable_notice(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        e: &QueueEntry,
        reason: &str,
        now: i64,
    ) -> Result<(), NodeError> {
        if let (Ok(sender), Ok(id)) = (e.from.parse::<OrganId>(), e.doc_id.parse::<DocId>())
            && e.kind == pb::Kind::Document as i32
            && let Some((rec, _)) = self.known_doc(&e.from, &e.doc_id)?
        {
            let digest =
                Digest::from_slice(&rec.header_sha256).ok_or_else(|| internal("stored digest"))?;
            let recipients: Vec<OrganId> =
                e.recipients.iter().filter_map(|r| r.parse().ok()).collect();
            let spec = ReceiptSpec {
                kind: ReceiptType::Undeliverable,
                for_from: &sender,
                for_doc_id: &id,
                envelope_sha256: &digest,
                recipients: &recipients,
                detail: reason,
            };
            self.plan_new_receipt(w, plan, &Sender::Node(self.node_id.clone()), &spec, now)?;
        }
        Ok(())
    }

    /// Parks documents in the queues of disconnected children that missed their
    /// delivery deadline, and sends each sender a signed UNDELIVERABLE receipt.
    /// Documents whose recipients the directory has since moved elsewhere are
    /// first routed again (a connected child refuses them, which does the same).
    pub fn park_overdue(&self) -> Result<usize, NodeError> {
        let now = now_ms();
        let min_deadline = self.min_deadline_ms();
        let mut children: Vec<NodeId> = self.routing().child_nodes().cloned().collect();
        // Queues of children no longer configured still hold documents: they
        // are as good as disconnected for ever, and their senders must hear.
        let gone: Vec<NodeId> = self
            .lock_counts()
            .iter()
            .filter(|(_, n)| **n > 0)
            .filter_map(|(k, _)| k.strip_prefix("q:child:")?.parse::<NodeId>().ok())
            .filter(|n| !children.contains(n))
            .collect();
        children.extend(gone);
        // Entries are in arrival order, so past the first one enqueued less
        // than the shortest deadline ago nothing is overdue, unless a due date
        // made a deadline shorter: then every queue is read to its end, and
        // the next such deadline found.
        let full = now >= self.next_short_deadline.load(Ordering::Relaxed);
        if full {
            self.next_short_deadline.store(i64::MAX, Ordering::Relaxed);
        }
        let mut parked = 0;
        for child in children {
            if self.is_connected(&child) {
                continue;
            }
            let queue = format!("child:{child}");
            let mut overdue = Vec::new();
            let mut moved = Vec::new();
            let mut after = None;
            'scan: loop {
                let rows = self.queue_peek(&queue, after, 256)?;
                if rows.is_empty() {
                    break;
                }
                for (seq, e) in rows {
                    after = Some(seq);
                    if full {
                        self.note_short_deadline(&e, now, min_deadline);
                    }
                    if !full && e.enqueued_at_ms + min_deadline > now {
                        break 'scan;
                    }
                    if full && let Some(routes) = self.moved_to(&queue, &e) {
                        moved.push((seq, e, routes));
                    } else if e.deadline_ms != 0 && e.deadline_ms <= now {
                        overdue.push((seq, e));
                    }
                }
            }
            if overdue.is_empty() && moved.is_empty() {
                continue;
            }
            let mut w = self.lock();
            // Back meanwhile: what it is being sent is not given up on (the
            // sender would hear "undeliverable", then "delivered").
            if self.is_connected(&child) {
                continue;
            }
            let mut plan = Plan::default();
            for (seq, e, routes) in moved {
                let key = Key::new().str(&queue).u64(seq).build();
                if self.store.get(Space::Queue, &key)?.is_some() {
                    let why = format!("{child} is not connected");
                    self.plan_reroute(&mut w, &mut plan, &queue, seq, &e, routes, &why)?;
                }
            }
            for (seq, e) in &overdue {
                let key = Key::new().str(&queue).u64(*seq).build();
                if self.store.get(Space::Queue, &key)?.is_none() {
                    continue;
                }
                let reason = format!(
                    "not delivered to {} within the deadline (priority {}); parked at {}",
                    e.recipients.join(", "),
                    e.priority,
                    self.node_id
                );
                self.plan_dequeue(&mut plan, &queue, *seq, e);
                plan.deltas.extend(parked_deltas(e, 1));
                plan.batch.put(
                    Space::Parked,
                    key,
                    record::encode(&DeadEntry {
                        entry: Some(e.clone()),
                        code: Code::DeadlineExceeded as i32,
                        reason: reason.clone(),
                        at_ms: now,
                        here: false,
                    }),
                );
                plan.audit("parked", &e.doc_id, &e.from, reason.clone());
                tracing::error!(doc_id = %e.doc_id, from = %e.from, recipients = ?e.recipients, %queue,
                    "delivery deadline missed; sender notified, parked for requeue");
                self.plan_undeliverable(&mut w, &mut plan, e, &reason, now)?;
                parked += 1;
            }
            self.finish(w, plan)?;
        }
        self.stats
            .parked
            .fetch_add(parked as u64, Ordering::Relaxed);
        Ok(parked)
    }

    /// Puts a document's parked entries (past their deadline) and dead
    /// letters (refused for good, requeued once their cause is fixed: an
    /// agency added to a directory, a certificate renewed) back at the end of
    /// their queues, routed again: the directory may have moved a recipient
    /// to another child since (the old one may be gone for good). In one
    /// write. What cannot go stays held and is listed with why; refused
    /// (the first reason) when nothing can.
    /// `from` names the sender when several used the doc_id (each sender
    /// picks its own); without it, such a doc_id is refused, naming them.
    pub fn requeue(&self, doc_id: &DocId, from: Option<&str>) -> Result<Requeued, NodeError> {
        let mut out = Requeued::default();
        let mut refusals = Vec::new();
        out.entries = self.act_on_held_of(doc_id, from, |st, w, plan, space, k, held, now| {
            let sender = held
                .entry
                .as_ref()
                .map(|e| e.from.clone())
                .unwrap_or_default();
            let (n, why) = st.try_requeue(w, plan, space, k, held, now)?;
            if let Some(why) = why {
                out.still_held(doc_id.to_string(), sender, why.reason.clone());
                if n == 0 {
                    refusals.push(why);
                }
            }
            Ok(n)
        })?;
        if out.entries == 0
            && let Some(first) = refusals.into_iter().next()
        {
            return Err(first.into());
        }
        Ok(out)
    }

    /// Plans `act` on each parked entry and dead letter of one document
    /// ([`Self::held_of`], each read again under the writer lock), in one
    /// write, none of it when `act` fails; what `act` counts, or not found
    /// when nothing is held.
    fn act_on_held_of(
        &self,
        doc_id: &DocId,
        from: Option<&str>,
        mut act: impl FnMut(
            &Self,
            &mut Writer,
            &mut Plan,
            Space,
            Vec<u8>,
            DeadEntry,
            i64,
        ) -> Result<usize, NodeError>,
    ) -> Result<usize, NodeError> {
        let d = doc_id.to_string();
        let found = self.held_of(&d, from)?;
        let now = now_ms();
        let mut w = self.lock();
        let mut plan = Plan::default();
        let (mut n, mut read) = (0, 0);
        for (space, k) in found {
            let Some(v) = self.store.get(space, &k)? else {
                continue;
            };
            let held: DeadEntry = record::decode(space, &k, &v)?;
            read += 1;
            n += act(self, &mut w, &mut plan, space, k, held, now)?;
        }
        if read == 0 {
            return Err(Refusal::not_found(format!(
                "no parked entry or dead letter for document {d}"
            ))
            .into());
        }
        self.finish(w, plan)?;
        Ok(n)
    }

    /// Goes through every parked entry and dead letter (of `queue` only,
    /// when given), 256 per write under the writer lock, handing `act` each
    /// one as read (or why it cannot be), and whether it was held after the
    /// walk began (what the operator has not seen); the sum of what `act`
    /// counts. Each write stays done when a later one fails: the error then
    /// says how many of `what` were done before it.
    fn walk_held(
        &self,
        queue: Option<&str>,
        what: &str,
        mut act: impl FnMut(
            &Self,
            &mut Writer,
            &mut Plan,
            Space,
            Vec<u8>,
            Result<DeadEntry, NodeError>,
            bool,
            i64,
        ) -> Result<usize, NodeError>,
    ) -> Result<usize, NodeError> {
        let prefix = queue.map(queue_prefix).unwrap_or_default();
        let started = now_ms();
        let mut done = 0;
        let mut walk = || -> Result<(), NodeError> {
            for space in [Space::Parked, Space::Dead] {
                let mut after: Option<Vec<u8>> = None;
                loop {
                    let now = now_ms();
                    let mut w = self.lock();
                    let rows = self.store.scan(space, &prefix, after.as_deref(), 256)?;
                    let Some((last, _)) = rows.last() else { break };
                    after = Some(last.clone());
                    let mut plan = Plan::default();
                    let mut n = 0;
                    for (k, v) in rows {
                        let held =
                            record::decode::<DeadEntry>(space, &k, &v).map_err(NodeError::from);
                        let late = held.as_ref().is_ok_and(|h| h.at_ms > started);
                        n += act(self, &mut w, &mut plan, space, k, held, late, now)?;
                    }
                    self.finish(w, plan)?;
                    done += n;
                }
            }
            Ok(())
        };
        match walk() {
            Ok(_) => Ok(done),
            Err(err) if done == 0 => Err(err),
            Err(err) => Err(err.after_done(format!("{done} {what}"))),
        }
    }

    /// The parked entries and dead letters of document `d` (of sender
    /// `from`, when given; refused when several senders used the doc_id and
    /// none is named), by space and key. Found without the writer lock
    /// (every held entry is read: intake does not wait for that); the caller
    /// reads each again under it.
    fn held_of(&self, d: &str, from: Option<&str>) -> Result<Vec<(Space, Vec<u8>)>, NodeError> {
        let mut found = Vec::new();
        let (mut senders, mut others) = (BTreeSet::new(), BTreeSet::new());
        for space in [Space::Parked, Space::Dead] {
            for (k, v) in self.store.scan(space, &[], None, usize::MAX)? {
                // One that cannot be read is not this document's to stop
                // (`discard_all` drops it).
                let Ok(held) = record::decode::<DeadEntry>(space, &k, &v) else {
                    continue;
                };
                let Some(e) = held.entry.as_ref().filter(|e| e.doc_id == d) else {
                    continue;
                };
                if from.is_none_or(|f| f == e.from) {
                    senders.insert(e.from.clone());
                    found.push((space, k));
                } else {
                    others.insert(e.from.clone());
                }
            }
        }
        if found.is_empty() && !others.is_empty() {
            return Err(Refusal::not_found(format!(
                "document {d} is held here only for {}, not {}",
                others.into_iter().collect::<Vec<_>>().join(", "),
                from.unwrap_or_default()
            ))
            .into());
        }
        if senders.len() > 1 {
            return Err(Refusal::new(
                Code::FailedPrecondition,
                format!(
                    "document {d} is held for several senders ({}), each with its own doc_id: name one with from",
                    senders.into_iter().collect::<Vec<_>>().join(", ")
                ),
            )
            .into());
        }
        Ok(found)
    }

    /// Drops a document's parked entries and dead letters for good, once an
    /// operator has dealt with them otherwise (sent again under a new doc_id,
    /// say): `reason` is audited and told to a sender on this node. A parked
    /// entry's files start their retention as a delivery done would.
    pub fn discard(
        &self,
        doc_id: &DocId,
        from: Option<&str>,
        reason: &str,
    ) -> Result<usize, NodeError> {
        self.act_on_held_of(doc_id, from, |st, _, plan, space, k, held, now| {
            st.plan_discard(plan, space, k, held, reason, now)
        })
    }

    /// [`Self::discard`] for every parked entry and dead letter (of `queue`
    /// only, when given), a few hundred per write.
    /// Entries held after it began (what the operator has not seen) stay;
    /// one that cannot be read is dropped too, audited as such.
    pub fn discard_all(&self, queue: Option<&str>, reason: &str) -> Result<usize, NodeError> {
        self.walk_held(
            queue,
            "held entries discarded",
            |st, _, plan, space, k, held, late, now| {
                let held = match held {
                    _ if late => return Ok(0),
                    Ok(held) => held,
                    Err(e) => {
                        tracing::error!(key = %hex::encode(&k), error = %e, "an unreadable held entry is discarded");
                        DeadEntry {
                            reason: format!("unreadable: {e}"),
                            ..Default::default()
                        }
                    }
                };
                st.plan_discard(plan, space, k, held, reason, now)
            },
        )
    }

    fn plan_discard(
        &self,
        plan: &mut Plan,
        space: Space,
        key: Vec<u8>,
        held: DeadEntry,
        reason: &str,
        now: i64,
    ) -> Result<usize, NodeError> {
        let held_on = queue_of(&key).unwrap_or_default();
        plan.batch.delete(space, key);
        match (space, &held.entry) {
            (Space::Parked, Some(e)) => plan.deltas.extend(parked_deltas(e, -1)),
            (Space::Parked, None) => plan.deltas.push((PARKED_COUNT.to_owned(), -1)),
            _ => plan.deltas.push((DEAD_COUNT.to_owned(), -1)),
        }
        let Some(e) = held.entry else {
            // Nothing names a document: the line says what was dropped.
            plan.audit(
                "discarded",
                "",
                "",
                format!("a held entry on {held_on} ({}): {reason}", held.reason),
            );
            return Ok(1);
        };
        if space == Space::Parked {
            // Still counted in what its document keeps here: done now.
            self.plan_done_once(plan, &e.from, &e.doc_id, now)?;
        }
        let was = held_was(space, &held_on, held.here, &held.reason);
        let why = format!(
            "discarded by an operator at {}: {reason} ({was})",
            self.node_id
        );
        plan.audit("discarded", &e.doc_id, &e.from, why.clone());
        self.plan_sender_note(plan, &e, &why, now)?;
        Ok(1)
    }

    /// [`Self::requeue`] for every parked entry and dead letter (of `queue`
    /// only, when given), after a cause that held many is fixed. Each one
    /// that cannot be requeued (its bytes released, no route) stays where it
    /// is, and is told with the reason; the rest go, a few hundred per write.
    /// When a write fails part way, the error says what the writes before
    /// it requeued and how many of the entries it went through could not
    /// go, naming the first with its reason.
    pub fn requeue_all(&self, queue: Option<&str>) -> Result<Requeued, NodeError> {
        let mut out = Requeued::default();
        // What is held after it began (one of these refused again while it
        // runs) is not taken up again by this run.
        let walked = self.walk_held(
            queue,
            "entries requeued",
            |st, w, plan, space, k, held, late, now| {
                let (doc_id, from) = held
                    .as_ref()
                    .ok()
                    .and_then(|h| h.entry.as_ref())
                    .map(|e| (e.doc_id.clone(), e.from.clone()))
                    .unwrap_or_default();
                let (n, why) = match held {
                    Ok(DeadEntry { entry: None, .. }) => return Ok(0),
                    Ok(_) if late => (
                        0,
                        Some("held after this requeue began (refused again meanwhile?); requeue again".into()),
                    ),
                    Ok(held) => {
                        let (n, why) = st.try_requeue(w, plan, space, k, held, now)?;
                        (n, why.map(|r| r.reason))
                    }
                    // Listed, and the others go: discard drops it.
                    Err(err) => {
                        let q = queue_of(&k).unwrap_or_default();
                        (
                            0,
                            Some(format!("a held entry on {q} cannot be read ({err}); truc discard --all --queue {q} drops it")),
                        )
                    }
                };
                if let Some(why) = why {
                    out.still_held(doc_id, from, why);
                }
                Ok(n)
            },
        );
        match walked {
            Ok(entries) => {
                out.entries = entries;
                Ok(out)
            }
            // What could not go, which the error alone would not tell (the
            // failed write's entries that could not go are counted too: they
            // stay held whatever the failure).
            Err(NodeError::Partly { error, done, .. }) if out.refused_total > 0 => {
                let (doc_id, from, why) = &out.refused[0];
                let first = if doc_id.is_empty() {
                    why.clone()
                } else {
                    format!("{doc_id} from {from}: {why}")
                };
                Err(NodeError::Partly {
                    error,
                    done,
                    also: format!(
                        "; {} could not go, the first: {first}; requeue again to list them all",
                        out.refused_total
                    ),
                })
            }
            Err(err) => Err(err),
        }
    }

    /// [`Self::plan_requeue`], undone when it is refused: the entries it
    /// made, and why what stays held stays (part of it, or all of it when
    /// refused).
    fn try_requeue(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        space: Space,
        key: Vec<u8>,
        held: DeadEntry,
        now: i64,
    ) -> Result<(usize, Option<Refusal>), NodeError> {
        let mark = plan.mark();
        match self.plan_requeue(w, plan, space, key, held, now) {
            Ok(done) => Ok(done),
            Err(NodeError::Refused(r)) => {
                plan.rollback(mark);
                Ok((0, Some(r)))
            }
            Err(err) => Err(err),
        }
    }

    /// Plans one held entry (`key` in `space`: parked or dead) back onto the
    /// queues its recipients route to now; how many entries that makes, and
    /// why the part that cannot go stays held, if any (recipients that left
    /// a relay's subtree, or that this node now serves itself). Refused when
    /// no part can go.
    fn plan_requeue(
        &self,
        w: &mut Writer,
        plan: &mut Plan,
        space: Space,
        key: Vec<u8>,
        held: DeadEntry,
        now: i64,
    ) -> Result<(usize, Option<Refusal>), NodeError> {
        let Some(mut e) = held.entry.clone() else {
            return Ok((0, None));
        };
        let held_on = queue_of(&key).ok_or_else(|| internal("held entry key"))?;
        let why = held_was(space, &held_on, held.here, &held.reason);
        let was = match space {
            Space::Parked => "parked",
            _ if held.here => "not sent",
            _ => "refused",
        };
        let cannot = |what: String| {
            Refusal::new(
                Code::FailedPrecondition,
                format!(
                    "document {} from {} {was} on {held_on} cannot be requeued: {what}",
                    e.doc_id, e.from
                ),
            )
        };
        let recipients: Vec<OrganId> = e
            .recipients
            .iter()
            .map(|r| {
                r.parse()
                    .map_err(|_| cannot(format!("its recipient {r:?} is not an agency code")))
            })
            .collect::<Result<_, _>>()?;
        // Each once (routed one by one below, one listed twice would go twice).
        let mut seen = BTreeSet::new();
        let recipients: Vec<OrganId> = recipients
            .into_iter()
            .filter(|r| seen.insert(r.clone()))
            .collect();
        // Read once: whether it came from the parent, and (a dead letter)
        // whether what it needs is still kept.
        let record = self.doc_record(plan, &doc_key(&e.from, &e.doc_id))?;
        // Where each part goes, and the recipients that cannot go, with why.
        let mut queues = Vec::new();
        let mut stay: Vec<(Vec<OrganId>, String)> = Vec::new();
        if recipients.is_empty() {
            // Addressed to the peer itself (a directory change for the
            // parent): back where it was.
            queues.push((held_on.clone(), Vec::new()));
        } else {
            let routing = self.routing();
            // One recipient that cannot be routed (gone from the directory)
            // keeps none of the others from going.
            let routes = routing.route(&recipients).unwrap_or_else(|_| {
                let mut routes = BTreeMap::<Destination, Vec<OrganId>>::new();
                for r in &recipients {
                    match routing.route(std::slice::from_ref(r)) {
                        Ok(one) => {
                            for (dest, to) in one {
                                routes.entry(dest).or_default().extend(to);
                            }
                        }
                        Err(err) => {
                            stay.push((vec![r.clone()], format!("cannot be routed again: {err}")))
                        }
                    }
                }
                routes
            });
            let from_parent = record
                .as_ref()
                .is_some_and(|d| d.origin.starts_with("parent"));
            for (dest, to) in routes {
                let names = to.iter().map(ToString::to_string).collect::<Vec<_>>();
                let names = names.join(", ");
                // What the parent sent down is the parent's to route once its
                // recipients left this node's subtree: it would refuse it back.
                let why = if from_parent && dest == Destination::Parent {
                    format!(
                        "{names} left this node's subtree; the parent routes it, send it again from there"
                    )
                } else if let Some(queue) = queue_name(&dest) {
                    queues.push((queue, to));
                    continue;
                } else {
                    format!("{names} is now an agency this node serves itself")
                };
                stay.push((to, why));
            }
        }
        let stay_why = stay
            .iter()
            .map(|(_, why)| why.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        if queues.is_empty() {
            return Err(cannot(stay_why).into());
        }
        // The deliveries it makes, and the held entry itself while part of
        // it stays (still counted, as parked; a dead letter is not).
        let n = queues.len();
        let kept = !stay.is_empty();
        match space {
            // Still counted in what its document keeps here.
            Space::Parked => self.plan_split(plan, &e.from, &e.doc_id, n + usize::from(kept))?,
            // Done with when it was refused: what it needs must still be
            // here, and is kept again until these are done.
            _ => self
                .plan_revive(plan, &e, record, n)
                .map_err(|what| cannot(format!("{what}; send it again under a new doc_id")))?,
        }
        if space == Space::Parked {
            plan.deltas.extend(parked_deltas(&e, -1));
        }
        let stays = if kept {
            // The recipients that cannot go stay held, as they were.
            let entry = QueueEntry {
                recipients: stay
                    .iter()
                    .flat_map(|(to, _)| to.iter().map(ToString::to_string))
                    .collect(),
                ..e.clone()
            };
            if space == Space::Parked {
                plan.deltas.extend(parked_deltas(&entry, 1));
            }
            // Held now for why it cannot go, this node's own reason (`truc
            // queues` and the dashboard show it), no longer the refusal or
            // the deadline that first held it.
            let left = DeadEntry {
                entry: Some(entry),
                code: Code::FailedPrecondition as i32,
                reason: format!("kept held when its other recipients were requeued: {stay_why}"),
                here: true,
                ..held
            };
            plan.batch.put(space, key, record::encode(&left));
            let why = cannot(format!(
                "{stay_why} (its other recipients were requeued; this part stays {was} on {held_on})"
            ));
            plan.audit("kept held", &e.doc_id, &e.from, why.reason.clone());
            Some(why)
        } else {
            plan.batch.delete(space, key);
            if space == Space::Dead {
                plan.deltas.push((DEAD_COUNT.to_owned(), -1));
            }
            None
        };
        e.recipients = queues
            .iter()
            .flat_map(|(_, to)| to.iter().map(ToString::to_string))
            .collect();
        let note = format!("requeued by an operator at {} ({why})", self.node_id);
        self.plan_sender_note(plan, &e, &note, now)?;
        let n = queues.len();
        for (queue, to) in queues {
            e.enqueued_at_ms = now;
            e.deadline_ms = now + self.delivery.deadline_for(e.priority) as i64;
            e.recipients = to.iter().map(|o| o.to_string()).collect();
            let note = if kept {
                format!(
                    "on {queue} for {} by an operator ({why})",
                    e.recipients.join(", ")
                )
            } else {
                format!("on {queue} by an operator ({why})")
            };
            self.plan_enqueue(w, plan, queue, &e, "requeued", note)?;
        }
        Ok((n, stays))
    }

    /// A dead letter's document goes on its way again: its record and every
    /// file it names must still be here (no retention period has ended), and
    /// they are kept again until its `n` new deliveries are done. Why not,
    /// otherwise.
    fn plan_revive(
        &self,
        plan: &mut Plan,
        e: &QueueEntry,
        record: Option<DocRecord>,
        n: usize,
    ) -> Result<(), String> {
        let key = doc_key(&e.from, &e.doc_id);
        let Some(mut rec) = record else {
            return Err("its record is not kept here".into());
        };
        if rec.released_at_ms != 0 || rec.envelope_removed_at_ms != 0 {
            return Err("its stored bytes were released after their retention period".into());
        }
        let files = Digest::from_slice(&rec.envelope_sha256)
            .map(|d| ("envelope", d))
            .into_iter()
            .chain(
                rec.attachments
                    .iter()
                    .filter_map(|a| Digest::from_slice(a))
                    .map(|d| ("attachment", d)),
            );
        for (what, d) in files {
            if !self.blobs.contains(&d) {
                return Err(format!("its {what} {d} is not on disk"));
            }
        }
        // Counted as when it was taken (records from before the flag was
        // kept: counted when it has attachments).
        if rec.pending_counted || rec.bytes > 0 {
            rec.pending = rec.pending.saturating_add(n as u32);
            plan.docs.insert(key, rec);
        }
        Ok(())
    }

    /// A sender on this node sees `note`, what an operator did (requeued,
    /// discarded), on each recipient it was told failed (the state stays
    /// "failed" until a receipt proves more: states only move forward).
    fn plan_sender_note(
        &self,
        plan: &mut Plan,
        e: &QueueEntry,
        note: &str,
        now: i64,
    ) -> Result<(), NodeError> {
        let key = sent_key(&e.doc_id, &e.from);
        let Some(mut rec) = self.sent_record(plan, &key)? else {
            return Ok(());
        };
        for rr in rec
            .recipients
            .iter_mut()
            .filter(|r| e.recipients.contains(&r.organ) && state_of(r) == DeliveryState::Failed)
        {
            rr.detail = note.to_owned();
            rr.updated_at_ms = now;
        }
        plan.sent.insert(key, rec);
        Ok(())
    }

    /// Entries parked after their deadline, with their queue: the first
    /// `limit` by queue, oldest first on each. One that cannot be read is
    /// listed as such (see [`Self::held_entries`]) and named in `unreadable`.
    pub fn parked(
        &self,
        limit: usize,
        unreadable: &mut Vec<String>,
    ) -> Result<Vec<(String, DeadEntry)>, NodeError> {
        self.held_entries(Space::Parked, limit, unreadable)
    }

    /// The first `limit` entries `space` (parked, dead) holds, with the
    /// queue each was on. One whose record cannot be read does not hide the
    /// others: it is listed with no entry, DATA_LOSS and a reason that says
    /// how to drop it, and named in `unreadable`.
    fn held_entries(
        &self,
        space: Space,
        limit: usize,
        unreadable: &mut Vec<String>,
    ) -> Result<Vec<(String, DeadEntry)>, NodeError> {
        Ok(self
            .store
            .scan(space, &[], None, limit)?
            .into_iter()
            .map(|(k, v)| {
                let queue = queue_of(&k).unwrap_or_default();
                let held = record::decode(space, &k, &v).unwrap_or_else(|e| {
                    let reason = format!(
                        "this held entry cannot be read ({e}); truc discard --all --queue {queue} drops it"
                    );
                    unreadable.push(format!("on {queue}: {e}"));
                    DeadEntry {
                        entry: None,
                        code: Code::DataLoss as i32,
                        reason,
                        at_ms: 0,
                        here: true,
                    }
                });
                (queue, held)
            })
            .collect())
    }

    /// Transfers refused for good (dead letters), with their queue: the
    /// first `limit` by queue, oldest first on each (read without a scan of
    /// them all), and how many there are.
    pub fn dead_letters(
        &self,
        limit: usize,
        unreadable: &mut Vec<String>,
    ) -> Result<(u64, Vec<DeadLetter>), NodeError> {
        let total = self.dead_count();
        if total == 0 {
            return Ok((0, Vec::new()));
        }
        let shown = self
            .held_entries(Space::Dead, limit, unreadable)?
            .into_iter()
            .map(|(queue, d)| {
                let e = d.entry.unwrap_or_default();
                DeadLetter {
                    queue,
                    doc_id: e.doc_id,
                    from: e.from,
                    recipients: e.recipients,
                    code: format!("{:?}", Code::from_i32(d.code)),
                    reason: d.reason,
                    at_ms: d.at_ms,
                }
            })
            .collect();
        Ok((total, shown))
    }

    /// `read` for an operator's page, scrape or command: the caller waits
    /// `wait` at most, then has [`StoreError::Stalled`] in place of what the
    /// store has not answered (the alerts report it). A store that hangs is
    /// known only after [`STALL_AFTER`]; a read started before waits for it as
    /// long as it hangs. So the read runs on a thread of its own, which goes
    /// on once its caller has given up; while [`ABANDONED_READS_MAX`] such
    /// reads wait, or once the hang is known, callers are answered at once.
    ///
    /// [`StoreError::Stalled`]: truc_store::StoreError::Stalled
    pub fn read_within<T: Send + 'static>(
        self: &Arc<Self>,
        wait: std::time::Duration,
        read: impl FnOnce(&NodeState) -> Result<T, NodeError> + Send + 'static,
    ) -> Result<T, NodeError> {
        use std::sync::atomic::{AtomicU8, Ordering::SeqCst};
        const RUNNING: u8 = 0;
        const DONE: u8 = 1;
        const ABANDONED: u8 = 2;
        let stalled = |why: String| NodeError::Store(truc_store::StoreError::Stalled(why));
        if let Some(why) = self.store.stalled() {
            return Err(stalled(why));
        }
        let waiting = self.abandoned_reads.load(SeqCst);
        if waiting >= ABANDONED_READS_MAX {
            return Err(stalled(format!(
                "{waiting} earlier reads are still waiting for it"
            )));
        }
        /// Marks the read done, even if it panics; a read its caller gave up
        /// on no longer counts.
        struct Finish(Arc<NodeState>, Arc<AtomicU8>);
        impl Drop for Finish {
            fn drop(&mut self) {
                if self.1.compare_exchange(RUNNING, DONE, SeqCst, SeqCst) == Err(ABANDONED) {
                    self.0.abandoned_reads.fetch_sub(1, SeqCst);
                }
            }
        }
        let phase = Arc::new(AtomicU8::new(RUNNING));
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let finish = Finish(self.clone(), phase.clone());
        std::thread::Builder::new()
            .name("truc-read".into())
            .spawn(move || {
                let _ = tx.send(read(&finish.0));
                drop(finish);
            })
            .map_err(|source| NodeError::Io {
                what: "a thread for an operator's read".into(),
                source,
            })?;
        let failed = || NodeError::Other("an operator's read of the store failed".into());
        match rx.recv_timeout(wait) {
            Ok(r) => r,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(failed()),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                // Counted before it is marked, so that the thread's uncount
                // (if it ends now) never comes first.
                self.abandoned_reads.fetch_add(1, SeqCst);
                if phase
                    .compare_exchange(RUNNING, ABANDONED, SeqCst, SeqCst)
                    .is_ok()
                {
                    return Err(stalled(format!(
                        "a read has not answered for {} ms",
                        wait.as_millis()
                    )));
                }
                // It ended meanwhile: its answer is there (unless it panicked).
                self.abandoned_reads.fetch_sub(1, SeqCst);
                rx.try_recv().unwrap_or_else(|_| Err(failed()))
            }
        }
    }

    /// Documents waiting here per recipient agency (depth and the enqueue time of
    /// the oldest), and every document past its delivery deadline — still queued
    /// or parked — with its priority. Queues are read in arrival order and only as
    /// far as needed: up to the point where the oldest entry of every waiting
    /// recipient is known and nothing later can be overdue yet.
    ///
    /// Operators read it through [`Self::read_within`], which answers at once
    /// once the store is known to hang and waits a bounded time before.
    pub fn queue_snapshot(&self) -> Result<QueueSnapshot, NodeError> {
        self.queues_read(true)
    }

    /// [`Self::queue_snapshot`] without its lists of parked entries and dead
    /// letters (their counts are kept): what a scrape of the metrics and the
    /// alerts read.
    pub fn queue_counts(&self) -> Result<QueueSnapshot, NodeError> {
        self.queues_read(false)
    }

    fn queues_read(&self, lists: bool) -> Result<QueueSnapshot, NodeError> {
        let now = now_ms();
        let min_deadline = self.min_deadline_ms();
        let (queues, mut waiting): (Vec<(String, bool)>, BTreeMap<String, u64>) = {
            let c = self.lock_counts();
            // With whether an entry with a short deadline waits there.
            let q = c
                .iter()
                .filter(|(_, v)| **v > 0)
                .filter_map(|(k, _)| k.strip_prefix("q:"))
                .map(|q| {
                    (
                        q.to_owned(),
                        c.get(&format!("d:{q}")).is_some_and(|n| *n > 0),
                    )
                })
                .collect();
            let r = c
                .iter()
                .filter(|(_, v)| **v > 0)
                .filter_map(|(k, v)| k.strip_prefix("r:").map(|o| (o.to_owned(), *v as u64)))
                .collect();
            (q, r)
        };
        let mut oldest: BTreeMap<String, i64> = BTreeMap::new();
        let mut overdue = Vec::new();
        for (queue, short) in queues {
            let mut after = None;
            'scan: loop {
                let rows = self.queue_peek(&queue, after, 512)?;
                if rows.is_empty() {
                    break;
                }
                for (seq, e) in rows {
                    after = Some(seq);
                    let all_known = waiting.keys().all(|r| oldest.contains_key(r));
                    if all_known && !short && e.enqueued_at_ms + min_deadline > now {
                        break 'scan;
                    }
                    for r in &e.recipients {
                        oldest.entry(r.clone()).or_insert(e.enqueued_at_ms);
                        // A queue towards the parent has no recipient counts; show it too.
                        waiting.entry(r.clone()).or_insert(0);
                    }
                    if e.deadline_ms != 0 && e.deadline_ms <= now {
                        for r in &e.recipients {
                            overdue.push(Overdue {
                                doc_id: e.doc_id.clone(),
                                from: e.from.clone(),
                                recipient: r.clone(),
                                priority: e.priority,
                                deadline_ms: e.deadline_ms,
                                parked: false,
                                queue: queue.clone(),
                            });
                        }
                    }
                }
            }
        }
        // Queued ones counted as read; parked ones from the counts, and
        // listed from the first (a hub can hold tens of thousands).
        let mut overdue_counts: BTreeMap<(String, u32, bool), u64> = BTreeMap::new();
        for o in &overdue {
            *overdue_counts
                .entry((o.recipient.clone(), o.priority, o.parked))
                .or_default() += 1;
        }
        for (k, n) in self.lock_counts().iter().filter(|(_, n)| **n > 0) {
            if let Some((r, p)) = k.strip_prefix("p:").and_then(|k| k.split_once('\0'))
                && let Ok(p) = p.parse::<u32>()
            {
                overdue_counts.insert((r.to_owned(), p, true), *n as u64);
            }
        }
        let mut unreadable = Vec::new();
        let parked = if lists {
            self.parked(OVERDUE_SHOWN, &mut unreadable)?
        } else {
            Vec::new()
        };
        for (queue, d) in &parked {
            if let Some(e) = &d.entry {
                for r in &e.recipients {
                    overdue.push(Overdue {
                        doc_id: e.doc_id.clone(),
                        from: e.from.clone(),
                        recipient: r.clone(),
                        priority: e.priority,
                        deadline_ms: e.deadline_ms,
                        parked: true,
                        queue: queue.clone(),
                    });
                }
            }
        }
        overdue.sort_by(|a, b| {
            (a.deadline_ms, &a.doc_id, &a.recipient).cmp(&(b.deadline_ms, &b.doc_id, &b.recipient))
        });
        overdue.truncate(OVERDUE_SHOWN);
        let (dead_total, dead) = if lists {
            self.dead_letters(DEAD_LETTERS_SHOWN, &mut unreadable)?
        } else {
            (self.dead_count(), Vec::new())
        };
        Ok(QueueSnapshot {
            dead,
            dead_total,
            parked,
            recipients: waiting
                .into_iter()
                .map(|(organ, depth)| RecipientQueue {
                    oldest_ms: oldest.get(&organ).copied().unwrap_or(0),
                    depth: depth.max(u64::from(oldest.contains_key(&organ))),
                    organ,
                })
                .collect(),
            overdue,
            overdue_counts,
            unreadable,
        })
    }

    /// Every queue with its depth and the enqueue time of its head.
    pub fn queues(&self) -> Result<Vec<(String, u64, i64)>, NodeError> {
        let counts: Vec<(String, i64)> = self
            .lock_counts()
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("q:").map(|q| (q.to_owned(), *v)))
            .collect();
        let mut out = Vec::new();
        for (q, depth) in counts {
            let oldest = self
                .queue_peek(&q, None, 1)?
                .first()
                .map(|(_, e)| e.enqueued_at_ms)
                .unwrap_or(0);
            out.push((q, depth.max(0) as u64, oldest));
        }
        out.sort();
        Ok(out)
    }

    /// Inbox entries of a local agency, oldest first; `kind` "document", "status" or "".
    pub fn inbox(
        &self,
        organ: &OrganId,
        include_acked: bool,
        kind: &str,
        limit: usize,
        after_seq: u64,
    ) -> Result<Vec<(u64, InboxEntry)>, NodeError> {
        let prefix = Key::new().str(organ.as_str()).build();
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> =
            (after_seq > 0).then(|| Key::new().str(organ.as_str()).u64(after_seq).build());
        while out.len() < limit {
            let rows = self
                .store
                .scan(Space::Inbox, &prefix, after.as_deref(), 512)?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.clone());
            for (k, v) in rows {
                let e: InboxEntry = record::decode(Space::Inbox, &k, &v)?;
                if (include_acked || !e.acked) && (kind.is_empty() || e.kind == kind) {
                    let seq = trailing_u64(&k).ok_or_else(|| internal("inbox key"))?;
                    out.push((seq, e));
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// The inbox entries an ack or a nack answers: NOT_FOUND when the document
    /// was not received here, or not by `organ` if one is named.
    fn answerable_entries(
        &self,
        doc_id: &DocId,
        from: Option<&OrganId>,
        organ: Option<&OrganId>,
    ) -> Result<Vec<(Vec<u8>, InboxEntry)>, NodeError> {
        let entries = self.inbox_entries(doc_id, from)?;
        if entries.is_empty() {
            return Err(Refusal::not_found(format!("no received document {doc_id}")).into());
        }
        if let Some(o) = organ
            && !entries.iter().any(|(_, e)| e.organ == o.as_str())
        {
            return Err(
                Refusal::not_found(format!("{doc_id} was not delivered to {o} here")).into(),
            );
        }
        // Acking or nacking every sender's document under a doc_id another
        // sender also used would answer for one the agency never took.
        let concerned = entries
            .iter()
            .filter(|(_, e)| organ.is_none_or(|o| o.as_str() == e.organ));
        one_sender(doc_id, concerned.map(|(_, e)| e))?;
        Ok(entries)
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
            let organ = str_parts(&k, 3)
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
        one_sender(doc_id, entries.iter().map(|(_, e)| e))?;
        let doc = self.load_doc(&first.from, &first.doc_id)?;
        Ok((doc, entries.into_iter().map(|(_, e)| e).collect()))
    }

    /// Which of `organs` received `doc_id` here (from `from`, if named), and
    /// from whom: what an application serving `organs` may read and answer,
    /// whether or not the envelope is still kept. None of them: an empty list.
    /// Several senders among those documents: refused, naming them.
    pub fn received_by(
        &self,
        doc_id: &DocId,
        from: Option<&OrganId>,
        organs: &[OrganId],
    ) -> Result<(Vec<OrganId>, Option<OrganId>), NodeError> {
        let entries: Vec<InboxEntry> = self
            .inbox_entries(doc_id, from)?
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| organs.iter().any(|o| o.as_str() == e.organ))
            .collect();
        one_sender(doc_id, entries.iter())?;
        let mut mine: Vec<OrganId> = entries
            .iter()
            .map(|e| e.organ.parse().map_err(internal))
            .collect::<Result<_, _>>()?;
        mine.sort();
        mine.dedup();
        let sender = match entries.first() {
            Some(e) => Some(e.from.parse().map_err(internal)?),
            None => None,
        };
        Ok((mine, sender))
    }

    /// Whether every document received here under `doc_id` came from `from`
    /// (or none did).
    pub fn received_only_from(&self, doc_id: &DocId, from: &OrganId) -> Result<bool, NodeError> {
        Ok(self
            .inbox_entries(doc_id, None)?
            .iter()
            .all(|(_, e)| e.from == from.as_str()))
    }

    /// [`received`](Self::received) with the document's signed envelope, or
    /// why it is no longer here.
    pub fn received_envelope(
        &self,
        doc_id: &DocId,
        from: Option<&OrganId>,
    ) -> Result<(pb::SignedEnvelope, DocRecord, Vec<InboxEntry>), NodeError> {
        let (doc, entries) = self.received(doc_id, from)?;
        let from = entries.first().map(|e| e.from.as_str()).unwrap_or_default();
        let env = self.envelope_of(from, &doc_id.to_string(), &doc)?;
        Ok((env, doc, entries))
    }

    /// The application took the document: mark it acked for `organ` (or every local
    /// recipient) and send the sender a signed ACKED receipt (documents only).
    pub fn ack(
        &self,
        doc_id: &DocId,
        from: Option<&OrganId>,
        organ: Option<&OrganId>,
    ) -> Result<(Vec<OrganId>, Ticket), NodeError> {
        let mut w = self.lock();
        let entries = self.answerable_entries(doc_id, from, organ)?;
        let now = now_ms();
        let mut plan = Plan::default();
        let mut acked = Vec::new();
        for (key, mut e) in entries {
            if organ.is_some_and(|o| o.as_str() != e.organ) || e.acked {
                continue;
            }
            let recipient: OrganId = e.organ.parse().map_err(internal)?;
            e.acked = true;
            e.acked_at_ms = now;
            plan.deltas.push((format!("u:{}:{}", e.organ, e.kind), -1));
            plan.audit("acked", &e.doc_id, &e.from, format!("by {recipient}"));
            self.plan_done_once(&mut plan, &e.from, &e.doc_id, now)?;
            if e.kind == "document" {
                let sender: OrganId = e.from.parse().map_err(internal)?;
                let doc = self.load_doc(&e.from, &e.doc_id)?;
                let digest = Digest::from_slice(&doc.header_sha256)
                    .ok_or_else(|| internal("stored digest"))?;
                let spec = ReceiptSpec {
                    kind: ReceiptType::Acked,
                    for_from: &sender,
                    for_doc_id: doc_id,
                    envelope_sha256: &digest,
                    recipients: std::slice::from_ref(&recipient),
                    detail: "",
                };
                plan.inbox.insert(key, e);
                self.plan_new_receipt(
                    &mut w,
                    &mut plan,
                    &Sender::Agency(recipient.clone()),
                    &spec,
                    now,
                )?;
            } else {
                plan.inbox.insert(key, e);
            }
            acked.push(recipient);
        }
        let ticket = if plan.inbox.is_empty() {
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

    /// The record of `doc_id` sent by `from`, or, when none is named, by the
    /// one agency of this edge that used that doc_id (several: refused,
    /// naming them, as each sender chooses its own ids).
    pub fn sent_by(
        &self,
        doc_id: &DocId,
        from: Option<&OrganId>,
    ) -> Result<Vec<SentRecord>, NodeError> {
        pick_sender(self.sent(doc_id)?, doc_id, from)
    }

    /// What an agency of this edge sent, newest first.
    pub fn list_sent(&self, from: &OrganId, limit: usize) -> Result<Vec<SentRecord>, NodeError> {
        Ok(self.list_sent_page(from, limit, "")?.0)
    }

    /// [`Self::list_sent`] from `after` (a `next_after` of an earlier page,
    /// empty for the newest), and where the next page starts when this one
    /// is full (the index key past the agency's prefix, in hex).
    pub fn list_sent_page(
        &self,
        from: &OrganId,
        limit: usize,
        after: &str,
    ) -> Result<(Vec<SentRecord>, Option<String>), NodeError> {
        let prefix = Key::new().str(from.as_str()).build();
        let start = if after.is_empty() {
            None
        } else {
            let rest = hex::decode(after).map_err(|_| {
                Refusal::invalid(format!("after {after:?}: not a next_after of this list"))
            })?;
            Some([prefix.as_slice(), &rest].concat())
        };
        let rows = self
            .store
            .scan(Space::SentIndex, &prefix, start.as_deref(), limit)?;
        let next = rows
            .last()
            .filter(|_| rows.len() >= limit)
            .map(|(k, _)| hex::encode(&k[prefix.len()..]));
        let mut out = Vec::new();
        for (k, _) in rows {
            let Some(doc_id) = k
                .get(prefix.len() + 8..)
                .and_then(|rest| str_parts(rest, 1))
                .and_then(|mut p| p.pop())
            else {
                continue;
            };
            let key = sent_key(&doc_id, from.as_str());
            if let Some(bytes) = self.store.get(Space::Sent, &key)? {
                out.push(record::decode(Space::Sent, &key, &bytes)?);
            }
        }
        Ok((out, next))
    }

    /// The signed receipts kept for one sent record: (recipient, envelope).
    pub fn receipts_of(
        &self,
        rec: &SentRecord,
    ) -> Result<Vec<(String, pb::SignedEnvelope)>, NodeError> {
        let mut out = Vec::new();
        for rr in &rec.recipients {
            for key in &rr.receipts {
                if let Some(bytes) = self.store.get(Space::Docs, key)? {
                    let d: DocRecord = record::decode(Space::Docs, key, &bytes)?;
                    let (from, doc_id) = split_doc_key(key);
                    out.push((rr.organ.clone(), self.envelope_of(&from, &doc_id, &d)?));
                }
            }
        }
        Ok(out)
    }

    /// The envelope of one sent record's document.
    pub fn envelope_of_sent(&self, rec: &SentRecord) -> Result<pb::SignedEnvelope, NodeError> {
        let doc = self.load_doc(&rec.from, &rec.doc_id)?;
        self.envelope_of(&rec.from, &rec.doc_id, &doc)
    }

    /// The envelope `from` (any agency here when None) sent under `doc_id`.
    pub fn sent_envelope_from(
        &self,
        doc_id: &DocId,
        from: Option<&OrganId>,
    ) -> Result<Option<pb::SignedEnvelope>, NodeError> {
        let Some(rec) = self
            .sent(doc_id)?
            .into_iter()
            .rev()
            .find(|r| from.is_none_or(|f| r.from == f.as_str()))
        else {
            return Ok(None);
        };
        Ok(Some(self.envelope_of_sent(&rec)?))
    }

    /// Whether this node checks received PDFs' signatures.
    pub fn checks_pdfs(&self) -> bool {
        self.pdf.is_some()
    }

    /// The revocation lists the signers of PDFs are checked against from now
    /// on (the signing CA's: PDFs are signed with agency keys).
    pub fn set_pdf_crls(
        &self,
        crls: &[rustls::pki_types::CertificateRevocationListDer<'_>],
    ) -> Result<(), truc_pdfsig::Error> {
        match &self.pdf {
            Some(p) => p.anchors.set_crls(crls),
            None => Ok(()),
        }
    }

    fn pdf_key(from: &str, doc_id: &str) -> Vec<u8> {
        Key::new().str("pdfsig").str(from).str(doc_id).build()
    }

    /// The PDF signature checks recorded for a received document (None: none yet).
    pub fn pdf_checks_recorded(
        &self,
        from: &str,
        doc_id: &str,
    ) -> Result<Option<Vec<pb::PdfSignatureCheck>>, NodeError> {
        let Some(v) = self.store.get(Space::Meta, &Self::pdf_key(from, doc_id))? else {
            return Ok(None);
        };
        Ok(Some(
            pb::PdfSignatureChecks::decode(v.as_slice())
                .map_err(internal)?
                .checks,
        ))
    }

    /// Checks the signatures embedded in a received document's PDF attachments
    /// and records the result with it (audited), unless that was done already.
    /// Blocking: reads the files, each at most `pdf.max_bytes`.
    pub fn check_pdfs(
        &self,
        from: &str,
        doc_id: &str,
    ) -> Result<Vec<pb::PdfSignatureCheck>, NodeError> {
        let doc = self.load_doc(from, doc_id)?;
        if doc.attachments.is_empty() {
            // No file, no PDF: the envelope need not be read (it was, for
            // every document that arrived).
            return Ok(Vec::new());
        }
        let env = self.envelope_of(from, doc_id, &doc)?;
        let header = pb::Header::decode(env.header_bytes.as_slice()).map_err(internal)?;
        self.check_pdfs_of(&header, doc.received_at_ms)
    }

    /// [`check_pdfs`](Self::check_pdfs) for a header already at hand; nothing
    /// is read for a document without PDF attachments.
    /// Signatures are judged as at `received_at_ms`, when this node got the
    /// document (the check runs then, or at the first read after a restart
    /// or a lagging event stream: a certificate that expired since does not
    /// make an older arrival invalid). A verdict that may change (a
    /// revocation list past its next update, a damaged copy) is not recorded.
    pub fn check_pdfs_of(
        &self,
        header: &pb::Header,
        received_at_ms: i64,
    ) -> Result<Vec<pb::PdfSignatureCheck>, NodeError> {
        let pdfs: Vec<&pb::AttachmentRef> =
            header.attachments.iter().filter(|a| is_pdf(a)).collect();
        if pdfs.is_empty() {
            return Ok(Vec::new());
        }
        let (from, doc_id) = (header.from.as_str(), header.doc_id.as_str());
        if let Some(done) = self.pdf_checks_recorded(from, doc_id)? {
            return Ok(done);
        }
        let Some(pdf) = &self.pdf else {
            return Ok(Vec::new());
        };
        let mut checks = Vec::new();
        // A damaged stored copy is reported, not recorded: once repaired (the
        // document fetched again), the next read checks it.
        let mut record = true;
        for a in pdfs {
            let not_checked = |why: String| pb::PdfSignatureCheck {
                attachment: a.name.clone(),
                verdict: "not checked".into(),
                detail: why,
                ..Default::default()
            };
            let check = if a.size > pdf.max_bytes {
                not_checked(format!(
                    "{} bytes, more than pdf.max_bytes ({})",
                    a.size, pdf.max_bytes
                ))
            } else {
                let digest =
                    Digest::from_slice(&a.sha256).ok_or_else(|| internal("stored digest"))?;
                match self.blobs.read(&digest) {
                    Ok(bytes) => {
                        let at = if received_at_ms > 0 {
                            received_at_ms
                        } else {
                            now_ms()
                        };
                        // Manifests often say application/pdf of other
                        // files (edXML's own note): one not named .pdf whose
                        // bytes are no PDF is not a PDF, not a malformed one.
                        if !named_pdf(&a.name) && !truc_pdfsig::has_pdf_header(&bytes) {
                            not_checked(format!(
                                "labelled {} but not a PDF (no %PDF- header): no signature to check",
                                a.content_type
                            ))
                        } else {
                            let report = truc_pdfsig::verify_pdf(&bytes, &pdf.anchors, at);
                            if report.as_ref().is_ok_and(|r| !r.is_final()) {
                                record = false;
                            }
                            pdf_verdict(&a.name, report, from)
                        }
                    }
                    Err(truc_store::BlobError::Missing(_)) => {
                        not_checked("the file is no longer kept here".into())
                    }
                    Err(e @ truc_store::BlobError::Mismatch { .. }) => {
                        tracing::error!(%doc_id, %from, attachment = %a.name, error = %e,
                            "a stored attachment is damaged; its PDF signatures cannot be checked");
                        record = false;
                        not_checked(format!("the stored copy is damaged: {e}"))
                    }
                    // Unreadable now (I/O): nothing is recorded, the caller hears why.
                    Err(e) => return Err(e.into()),
                }
            };
            checks.push(check);
        }
        if !record {
            return Ok(checks);
        }
        let w = self.lock();
        let mut plan = Plan::default();
        plan.batch.put(
            Space::Meta,
            Self::pdf_key(from, doc_id),
            pb::PdfSignatureChecks {
                checks: checks.clone(),
            }
            .encode_to_vec(),
        );
        plan.audit("pdf-checked", doc_id, from, pdf_summary(&checks));
        // Derived from stored bytes: if this write is lost, the next read checks again.
        self.finish(w, plan)?;
        Ok(checks)
    }

    /// Signed business statuses about `doc_id` that reached this node's agencies
    /// (through the status index: no inbox is scanned).
    pub fn statuses_about(&self, doc_id: &DocId) -> Result<Vec<pb::SignedEnvelope>, NodeError> {
        let prefix = Key::new()
            .str(STATUS_INDEX)
            .str(&doc_id.to_string())
            .build();
        let mut out = Vec::new();
        for (k, _) in self
            .store
            .scan(Space::InboxIndex, &prefix, None, usize::MAX)?
        {
            let (Some(parts), Some(seq)) = (str_parts(&k, 3), trailing_u64(&k)) else {
                continue;
            };
            let ikey = Key::new().str(&parts[2]).u64(seq).build();
            let Some(bytes) = self.store.get(Space::Inbox, &ikey)? else {
                continue;
            };
            let e: InboxEntry = record::decode(Space::Inbox, &ikey, &bytes)?;
            let doc = self.load_doc(&e.from, &e.doc_id)?;
            out.push(self.envelope_of(&e.from, &e.doc_id, &doc)?);
        }
        Ok(out)
    }

    /// The proof that this node's audit entries about `doc_id` are in its log: the
    /// entries from the first one about it to the last one about it, and that
    /// last entry's place and hash signed by this node's key. Whoever holds both
    /// recomputes the chain to the signed entry. The segment ends there, not at
    /// the log's head: a document archived a month after it was delivered would
    /// otherwise carry every entry the node wrote since (past the message limit
    /// on a busy hub), and other documents' entries with them.
    pub fn audit_proof(
        &self,
        doc_id: &str,
        document_sha256: &Digest,
    ) -> Result<(Vec<record::AuditEntry>, pb::SignedCheckpoint), NodeError> {
        let signer = self.checkpoint_signer.as_ref().ok_or_else(|| {
            NodeError::Other("this node has no key to sign its audit head with".into())
        })?;
        let prefix = Key::new().str(doc_id).build();
        let about: Vec<u64> = self
            .store
            .scan(Space::AuditIndex, &prefix, None, usize::MAX)?
            .iter()
            .filter_map(|(k, _)| trailing_u64(k))
            .collect();
        let (first, last) = match (about.iter().min(), about.iter().max()) {
            // The index names blocks by their last entry: the segment is cut
            // after the document's own last entry below.
            (Some(first), Some(last)) => (*first, *last),
            _ => {
                let (pruned, _) = audit::base(self.store.as_ref())?;
                let why = if pruned > 0 {
                    format!(
                        "no audit entry about {doc_id} here (entries 1–{pruned} were removed after the retention period)"
                    )
                } else {
                    format!("no audit entry about {doc_id} here")
                };
                return Err(Refusal::not_found(why).into());
            }
        };
        // From the first entry about it, in the block the index names.
        let mut entries = Vec::new();
        audit::each_block_after(self.store.as_ref(), first.saturating_sub(1), |k, v| {
            for e in audit::decode_block(&k, &v)? {
                if e.seq > last {
                    return Ok(std::ops::ControlFlow::Break(()));
                }
                if !entries.is_empty() || e.doc_id == doc_id {
                    entries.push(e);
                }
            }
            Ok(std::ops::ControlFlow::Continue(()))
        })?;
        if let Some(at) = entries.iter().rposition(|e| e.doc_id == doc_id) {
            entries.truncate(at + 1);
        }
        let end = entries.last().ok_or_else(|| {
            NodeError::Other(format!(
                "audit entries about {doc_id} are indexed but not found"
            ))
        })?;
        let start = &entries[0];
        let checkpoint = pb::AuditCheckpoint {
            node: self.node_id.to_string(),
            seq: end.seq,
            head_sha256: end.hash.clone(),
            at_ms: now_ms(),
            first_seq: start.seq,
            first_prev: start.prev.clone(),
            document_sha256: document_sha256.0.to_vec(),
        }
        .encode_to_vec();
        let sig = signer.sign(&checkpoint)?;
        Ok((
            entries,
            pb::SignedCheckpoint {
                checkpoint_bytes: checkpoint,
                signature: sig.bytes,
                algorithm: pb::SignatureAlgorithm::EcdsaP256Sha256 as i32,
                signer_chain: sig.chain,
            },
        ))
    }

    /// This node's audit entries about a document, in order.
    pub fn audit_trail(&self, doc_id: &str) -> Result<Vec<record::AuditEntry>, NodeError> {
        let prefix = Key::new().str(doc_id).build();
        let mut out = Vec::new();
        for (k, _) in self
            .store
            .scan(Space::AuditIndex, &prefix, None, usize::MAX)?
        {
            let Some(seq) = trailing_u64(&k) else {
                continue;
            };
            let key = audit::entry_key(seq);
            if let Some(bytes) = self.store.get(Space::Audit, &key)? {
                out.extend(
                    audit::decode_block(&key, &bytes)?
                        .into_iter()
                        .filter(|e| e.doc_id == doc_id),
                );
            }
        }
        Ok(out)
    }

    /// How many entries are parked after their deadline, over all queues.
    pub fn parked_count(&self) -> u64 {
        self.count_of(PARKED_COUNT)
    }

    /// One of the in-memory counts (0 when absent).
    fn count_of(&self, key: &str) -> u64 {
        self.lock_counts().get(key).copied().unwrap_or(0).max(0) as u64
    }

    /// How many transfers peers refused for good, over all queues.
    pub fn dead_count(&self) -> u64 {
        self.count_of(DEAD_COUNT)
    }

    /// Dead letters of `queue`.
    pub fn dead(&self, queue: &str) -> Result<Vec<DeadEntry>, NodeError> {
        self.store
            .scan(Space::Dead, &queue_prefix(queue), None, usize::MAX)?
            .into_iter()
            .map(|(k, v)| Ok(record::decode(Space::Dead, &k, &v)?))
            .collect()
    }

    /// Every counter by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = &self.stats;
        let c = self.commit.stats();
        [
            ("accepted", &s.accepted),
            ("duplicates", &s.duplicates),
            ("refused", &s.refused),
            ("deferred", &s.deferred),
            ("delivered", &s.delivered),
            ("receipts", &s.receipts),
            ("parked", &s.parked),
            ("stream_bytes_sent", &s.stream_bytes_sent),
            ("stream_bytes_resent", &s.stream_bytes_resent),
            ("stream_bytes_received", &s.stream_bytes_received),
            ("streams_resumed", &s.streams_resumed),
            ("edxml_refused", &s.edxml_refused),
            ("retention_released", &s.retention_released),
            (
                "retention_envelopes_removed",
                &s.retention_envelopes_removed,
            ),
            ("retention_deferred", &s.retention_deferred),
            ("audit_entries_pruned", &s.audit_entries_pruned),
            ("fsyncs", &c.flushes),
            ("batches", &c.batches),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.load(Ordering::Relaxed)))
        .chain({
            let (made, verified) = self.signatures.counts();
            [("signatures_made", made), ("signatures_verified", verified)]
        })
        .chain(
            self.store
                .remote_stats()
                .map(|r| ("store_requests", r.requests)),
        )
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
    //! A node state over any store, with throwaway CAs, agencies and node keys.
    use std::{collections::HashMap, sync::Arc};

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    use truc_core::{NodeId, RoutingTable};
    use truc_pki::{dev::DevCa, identity::Identity, sign::Signer};
    use truc_store::{BlobStore, Store};

    use rustls::pki_types::UnixTime;
    use truc_core::DocId;
    use truc_proto::v1 as pb;

    use super::{NodeState, Parts};
    use crate::{
        config::{DeliverySection, Limits, QuotaSection, TestHooks},
        directory::Directory,
        envelope::{self, Verified, Verifiers},
    };

    pub struct Fixture {
        pub ca: DevCa,
        pub transport: DevCa,
        pub blobs_dir: tempfile::TempDir,
        pub quotas: QuotaSection,
        pub limits: Limits,
        pub storage: crate::config::StorageSection,
    }

    impl Fixture {
        pub fn new() -> Self {
            Self {
                ca: DevCa::generate("test signing").unwrap(),
                transport: DevCa::generate("test transport").unwrap(),
                blobs_dir: tempfile::tempdir().unwrap(),
                quotas: QuotaSection::default(),
                limits: Limits::default(),
                storage: crate::config::StorageSection {
                    min_free_bytes: 0,
                    ..Default::default()
                },
            }
        }

        pub fn signer(&self, organ: &str) -> Signer {
            self.ca
                .agency_signer(&organ.parse().unwrap(), organ)
                .unwrap()
        }

        pub fn node_signer(&self, node: &str) -> Signer {
            let n: NodeId = node.parse().unwrap();
            let issued = self.transport.node_cert(&n, &[]).unwrap();
            Signer::from_der_for(
                &Identity::Node(n),
                vec![CertificateDer::from(issued.cert_der)],
                PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap(),
            )
            .unwrap()
        }

        /// `header` sealed with its sender's key and verified as a node does.
        pub fn seal_verified(&self, header: &pb::Header) -> Verified {
            let env = envelope::seal(header, &self.signer(&header.from)).unwrap();
            envelope::verify(env, &self.verifiers(), &Limits::default(), UnixTime::now()).unwrap()
        }

        /// A new document from `from` to `to`, sealed and checked.
        pub fn verified(&self, from: &str, to: &[&str]) -> Verified {
            let header = pb::Header {
                format_version: envelope::FORMAT_VERSION,
                doc_id: DocId::new_v7().to_string(),
                kind: pb::Kind::Document as i32,
                from: from.into(),
                to: to.iter().map(|s| s.to_string()).collect(),
                subject: "Công văn".into(),
                ..Default::default()
            };
            self.seal_verified(&header)
        }

        /// A document from `from` to `to` under a doc_id of the caller's
        /// (another sender may have used it).
        pub fn verified_as(&self, doc_id: &DocId, from: &str, to: &[&str]) -> Verified {
            self.seal_verified(&pb::Header {
                format_version: envelope::FORMAT_VERSION,
                doc_id: doc_id.to_string(),
                kind: pb::Kind::Document as i32,
                from: from.into(),
                to: to.iter().map(|s| s.to_string()).collect(),
                subject: "Trùng số".into(),
                ..Default::default()
            })
        }

        /// A document from `from` to `to` due at `due_at_ms` (0: no due date).
        pub fn verified_due(&self, from: &str, to: &str, due_at_ms: i64) -> Verified {
            let header = pb::Header {
                format_version: envelope::FORMAT_VERSION,
                doc_id: DocId::new_v7().to_string(),
                kind: pb::Kind::Document as i32,
                from: from.into(),
                to: vec![to.into()],
                subject: "Hỏa tốc".into(),
                due_at_ms,
                ..Default::default()
            };
            self.seal_verified(&header)
        }

        /// A document from G22 to H41 naming `data` as its attachment, stored
        /// on `node` first.
        pub fn with_attachment(&self, node: &NodeState, data: &[u8]) -> Verified {
            let d = node.blobs.put(data).unwrap();
            let header = pb::Header {
                format_version: envelope::FORMAT_VERSION,
                doc_id: DocId::new_v7().to_string(),
                kind: pb::Kind::Document as i32,
                from: "000.00.00.G22".into(),
                to: vec!["000.00.00.H41".into()],
                subject: "Phụ lục".into(),
                attachments: vec![pb::AttachmentRef {
                    name: "phu-luc.pdf".into(),
                    content_type: "application/pdf".into(),
                    size: data.len() as u64,
                    sha256: d.0.to_vec(),
                }],
                ..Default::default()
            };
            self.seal_verified(&header)
        }

        pub fn verifiers(&self) -> Verifiers {
            Verifiers {
                agencies: self.ca.signature_verifier().unwrap(),
                nodes: self.transport.signature_verifier().unwrap(),
            }
        }

        /// A hub whose children serve `organs[i]` as node `nodes[i]`.
        pub fn hub_with(&self, store: Arc<dyn Store>, children: &[(&str, &str)]) -> Arc<NodeState> {
            let mut routing = RoutingTable::new(false);
            for (organ, node) in children {
                routing.add_child_organ(organ.parse().unwrap(), node.parse().unwrap());
            }
            self.state("hub", routing, vec![], Some(self.node_signer("hub")), store)
        }

        /// A hub with children `vpcp` (G22) and `nghean` (H41).
        pub fn hub(&self, store: Arc<dyn Store>) -> Arc<NodeState> {
            self.hub_with(
                store,
                &[("000.00.00.G22", "vpcp"), ("000.00.00.H41", "nghean")],
            )
        }

        /// An edge `node` serving `organ` alone, on a memory store.
        pub fn edge_of(&self, node: &str, organ: &str) -> Arc<NodeState> {
            let mut routing = RoutingTable::new(true);
            routing.add_local(organ.parse().unwrap());
            self.state(
                node,
                routing,
                vec![self.signer(organ)],
                None,
                Arc::new(truc_store::MemoryStore::new()),
            )
        }

        /// An edge serving G22 under a parent.
        pub fn edge(&self, store: Arc<dyn Store>) -> Arc<NodeState> {
            let mut routing = RoutingTable::new(true);
            routing.add_local("000.00.00.G22".parse().unwrap());
            self.state(
                "vpcp",
                routing,
                vec![self.signer("000.00.00.G22")],
                None,
                store,
            )
        }

        pub fn state(
            &self,
            id: &str,
            routing: RoutingTable,
            signers: Vec<Signer>,
            node_signer: Option<Signer>,
            store: Arc<dyn Store>,
        ) -> Arc<NodeState> {
            self.state_granting(id, routing, signers, node_signer, store, HashMap::new())
        }

        /// [`state`](Self::state) whose children may register agencies
        /// below the ones `child_grants` gives them.
        pub fn state_granting(
            &self,
            id: &str,
            routing: RoutingTable,
            signers: Vec<Signer>,
            node_signer: Option<Signer>,
            store: Arc<dyn Store>,
            child_grants: HashMap<NodeId, truc_core::OrganId>,
        ) -> Arc<NodeState> {
            NodeState::new(Parts {
                node_id: id.parse().unwrap(),
                routing,
                signers,
                checkpoint_signer: node_signer.as_ref().map(|_| self.node_signer(id)),
                node_signer,
                pdf: None,
                verifiers: self.verifiers(),
                limits: self.limits.clone(),
                delivery: DeliverySection::default(),
                quotas: self.quotas.clone(),
                hooks: TestHooks::default(),
                store,
                blobs: BlobStore::open(self.blobs_dir.path()).unwrap(),
                directory: Directory::default(),
                storage: self.storage.clone(),
                grant: None,
                child_grants,
                parent: None,
            })
            .unwrap()
        }
    }
}

/// Whether an attachment is a PDF, whose signatures are checked: by its type
/// or its name.
pub fn is_pdf(a: &pb::AttachmentRef) -> bool {
    a.content_type.eq_ignore_ascii_case("application/pdf") || named_pdf(&a.name)
}

/// The name ends in `.pdf`, in any case.
fn named_pdf(name: &str) -> bool {
    let n = name.as_bytes();
    n.len() >= 4 && n[n.len() - 4..].eq_ignore_ascii_case(b".pdf")
}

/// Read failures that last happened more than `limit` ago: a new failure of
/// such an entry starts its count again, so they are forgotten.
fn forget_quiet_failures(m: &mut HashMap<(String, u64), (i64, i64)>, now: i64, limit: i64) {
    m.retain(|_, &mut (_, last)| now - last <= limit);
}

/// Where a queued transfer failed for good: refused by the peer, or not
/// sendable from this node.
#[derive(Debug, Clone, Copy)]
enum FailedAt {
    Peer,
    Here,
}

/// How received PDFs' signatures are checked.
#[derive(Debug, Clone)]
pub struct PdfCheck {
    pub anchors: truc_pdfsig::TrustAnchors,
    pub max_bytes: u64,
}

/// The records of `sent` (one doc_id's, by every agency here) that `from`
/// sent; without `from`, all of them when there is one sender, else refused,
/// naming the senders.
pub fn pick_sender(
    mut records: Vec<SentRecord>,
    doc_id: &DocId,
    from: Option<&OrganId>,
) -> Result<Vec<SentRecord>, NodeError> {
    match from {
        Some(f) => records.retain(|r| r.from == f.as_str()),
        None if records.len() > 1 => {
            let senders: Vec<&str> = records.iter().map(|r| r.from.as_str()).collect();
            return Err(Refusal::new(
                Code::FailedPrecondition,
                format!(
                    "several agencies here sent a document {doc_id} ({}): name the sender",
                    senders.join(", ")
                ),
            )
            .into());
        }
        None => {}
    }
    Ok(records)
}

/// One attachment's check as the API shows it: the document's verdict, and
/// each signature's with the agency a valid signer's certificate names
/// (compared with `sender`, the organ that sent the document).
fn pdf_verdict(
    name: &str,
    r: Result<truc_pdfsig::Report, truc_pdfsig::Error>,
    sender: &str,
) -> pb::PdfSignatureCheck {
    use truc_pdfsig::Verdict;
    let mut c = pb::PdfSignatureCheck {
        attachment: name.to_owned(),
        ..Default::default()
    };
    if let Ok(report) = &r {
        c.signatures = report
            .signatures
            .iter()
            .zip(&report.signers)
            .map(|(v, s)| pdf_signature(v, s.as_ref(), sender))
            .collect();
    }
    match r.map(|r| r.summary()) {
        // The document's verdict is one signature's (or "unsigned"), shown
        // as that signature is, its certificate aside.
        Ok(v) => {
            let s = pdf_signature(&v, None, sender);
            c.detail = if matches!(v, Verdict::Valid { .. }) && !s.covers_whole_file {
                "the signature covers an earlier revision".into()
            } else {
                s.detail
            };
            (c.verdict, c.signer, c.signing_time_ms) = (s.verdict, s.signer, s.signing_time_ms);
        }
        Err(truc_pdfsig::Error::Malformed(why)) => {
            c.verdict = "malformed".into();
            c.detail = why;
        }
        Err(e) => {
            c.verdict = "not checked".into();
            c.detail = e.to_string();
        }
    }
    c
}

/// One signature as the API shows it. Only a valid signature's certificate
/// is read for an agency id (an untrusted one could name any); one that
/// names none (a person's certificate from a national CA) is not compared.
fn pdf_signature(
    v: &truc_pdfsig::Verdict,
    s: Option<&truc_pdfsig::Signer>,
    sender: &str,
) -> pb::PdfSignature {
    use truc_pdfsig::Verdict;
    let mut p = pb::PdfSignature {
        signer: s.map(|s| s.name.clone()).unwrap_or_default(),
        ..Default::default()
    };
    match v {
        Verdict::Valid {
            signer,
            signing_time_ms,
            covers_whole_file,
        } => {
            p.verdict = "valid".into();
            p.signer = signer.clone();
            p.signing_time_ms = signing_time_ms.unwrap_or(0);
            p.covers_whole_file = *covers_whole_file;
            if let Some(Ok(info)) = s.map(|s| truc_pki::identity::cert_info(&s.certificate))
                && let truc_pki::identity::Identity::Organ(organ) = info.identity
            {
                p.other_agency = organ.as_str() != sender;
                p.signer_organ = organ.to_string();
            }
        }
        Verdict::Invalid { reason, .. } => {
            p.verdict = "invalid".into();
            p.detail = reason.clone();
        }
        Verdict::SignerUnknown { signer, reason } => {
            p.verdict = "signer unknown".into();
            p.signer = signer.clone();
            p.detail = reason.clone();
        }
        // Not a signature's verdict (only the report's summary).
        Verdict::Unsigned => p.verdict = "unsigned".into(),
    }
    p
}

/// The checks of a document in one line: `name: verdict (signer)`, then
/// how many signatures when more than one and the agencies other than the
/// sender that valid ones name, `;`-separated.
pub fn pdf_summary(checks: &[pb::PdfSignatureCheck]) -> String {
    checks
        .iter()
        .map(|c| {
            let mut s = format!("{}: {}", c.attachment, c.verdict);
            if !c.signer.is_empty() {
                s.push_str(&format!(" ({})", c.signer));
            }
            if c.signatures.len() > 1 {
                s.push_str(&format!(", {} signatures", c.signatures.len()));
            }
            let mut others: Vec<&str> = c
                .signatures
                .iter()
                .filter(|p| p.other_agency)
                .map(|p| p.signer_organ.as_str())
                .collect();
            others.sort_unstable();
            others.dedup();
            if !others.is_empty() {
                s.push_str(&format!(
                    ", signed by another agency than the sender ({})",
                    others.join(", ")
                ));
            }
            if !c.detail.is_empty() && c.verdict != "valid" {
                s.push_str(&format!(" — {}", c.detail));
            }
            s
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::pki_types::UnixTime;
    use tonic::Code;
    use truc_store::{MemoryStore, SledStore};

    use super::{testing::Fixture, *};
    use crate::envelope;

    /// An item undone in a batch leaves the records as the items before it
    /// left them: values it replaced come back, keys it added go.
    #[test]
    fn undoing_an_item_restores_what_it_changed_and_only_that() {
        let mut m: Staged<&str, u64> = Staged::default();
        m.insert("a", 1);
        m.insert("b", 2);
        let before = m.mark();
        m.insert("a", 10);
        m.insert("c", 3);
        m.insert("a", 11);
        m.undo_to(before);
        assert_eq!(
            m.iter().map(|(k, v)| (*k, *v)).collect::<Vec<_>>(),
            vec![("a", 1), ("b", 2)]
        );
        m.insert("d", 4);
        assert_eq!(m.take().len(), 3);
        assert!(m.is_empty() && m.mark() == 0);
    }

    /// A batch's count changes are summed by key, and an undone item takes
    /// back exactly its own: a quota check after it reads what the items
    /// before it left.
    #[test]
    fn count_changes_sum_by_key_and_an_undone_item_takes_back_its_own() {
        let mut d = Deltas::default();
        d.push(("q:parent".into(), 1));
        d.extend([("r:a".into(), 1), ("q:parent".into(), 1)]);
        assert_eq!((d.of("q:parent"), d.of("r:a"), d.of("r:b")), (2, 1, 0));
        let before = d.mark();
        d.extend([
            ("q:parent".into(), -2),
            ("r:b".into(), 1),
            ("r:b".into(), -1),
        ]);
        assert_eq!((d.of("q:parent"), d.of("r:b")), (0, 0));
        d.undo_to(before);
        assert_eq!((d.of("q:parent"), d.of("r:a"), d.of("r:b")), (2, 1, 0));
        assert_eq!(
            d.take().into_iter().collect::<Vec<_>>(),
            vec![("q:parent".to_owned(), 2), ("r:a".to_owned(), 1)]
        );
        assert_eq!(d.of("q:parent"), 0);
    }

    fn verified(f: &Fixture, from: &str, to: &[&str]) -> Verified {
        f.verified(from, to)
    }

    fn child(n: &str) -> Origin {
        Origin::Child(n.parse().unwrap())
    }

    fn with_attachment(f: &Fixture, hub: &NodeState, data: &[u8]) -> Verified {
        f.with_attachment(hub, data)
    }

    /// A hub whose child quangnam may register agencies below H47 (vpcp
    /// serves G22).
    fn hub_granting_quangnam(f: &Fixture) -> Arc<NodeState> {
        let mut routing = RoutingTable::new(false);
        routing.add_child_organ(
            "000.00.00.H47".parse().unwrap(),
            "quangnam".parse().unwrap(),
        );
        routing.add_child_organ("000.00.00.G22".parse().unwrap(), "vpcp".parse().unwrap());
        f.state_granting(
            "hub",
            routing,
            vec![],
            Some(f.node_signer("hub")),
            Arc::new(MemoryStore::new()),
            HashMap::from([(
                "quangnam".parse().unwrap(),
                "000.00.00.H47".parse().unwrap(),
            )]),
        )
    }

    /// quangnam's signed registration of `organ` (parent H47), served by `node`.
    fn registration(f: &Fixture, organ: &str, node: &str) -> Verified {
        let header = pb::Header {
            format_version: envelope::FORMAT_VERSION,
            doc_id: DocId::new_v7().to_string(),
            kind: pb::Kind::Directory as i32,
            from_node: "quangnam".into(),
            created_at_ms: now_ms(),
            directory: Some(pb::DirectoryChanges {
                changes: vec![pb::DirectoryChange {
                    remove: false,
                    organ: organ.into(),
                    name: "Huyện".into(),
                    parent: "000.00.00.H47".into(),
                    node: node.into(),
                }],
            }),
            ..Default::default()
        };
        let sealed = envelope::seal(&header, &f.node_signer("quangnam")).unwrap();
        envelope::verify(sealed, &f.verifiers(), &Limits::default(), UnixTime::now()).unwrap()
    }

    /// A relay below a relay gives up on a district: its notice, signed by
    /// its own node key, passes quangnam and is taken by the hub for the
    /// agency the directory places below quangnam; one for an agency served
    /// elsewhere is refused.
    #[test]
    fn a_notice_from_a_relay_below_a_relay_is_taken_for_its_own_agencies() {
        let f = Fixture::new();
        let hub = hub_granting_quangnam(&f);
        let district: OrganId = "001.00.10.H47".parse().unwrap();
        let (v, _) = hub
            .accept_batch(
                vec![(registration(&f, district.as_str(), "subrelay"), None)],
                &child("quangnam"),
            )
            .unwrap();
        assert!(matches!(v[..], [Verdict::Stored]), "{v:?}");
        let notice = |recipient: &OrganId| {
            let g22: OrganId = "000.00.00.G22".parse().unwrap();
            let spec = envelope::ReceiptSpec {
                kind: ReceiptType::Undeliverable,
                for_from: &g22,
                for_doc_id: &DocId::new_v7(),
                envelope_sha256: &Digest([7; 32]),
                recipients: std::slice::from_ref(recipient),
                detail: "not delivered within the deadline",
            };
            let header = envelope::receipt_header(
                &Sender::Node("subrelay".parse().unwrap()),
                &spec,
                now_ms(),
            );
            let sealed = envelope::seal(&header, &f.node_signer("subrelay")).unwrap();
            envelope::verify(sealed, &f.verifiers(), &Limits::default(), UnixTime::now()).unwrap()
        };
        let verdict = |v: Verified| {
            let (mut v, _) = hub
                .accept_batch(vec![(v, None)], &child("quangnam"))
                .unwrap();
            v.remove(0)
        };
        let below = verdict(notice(&district));
        assert!(
            !matches!(&below, Verdict::Refused(r) if r.code == Code::PermissionDenied),
            "the notice for an agency below quangnam is refused: {below:?}"
        );
        let elsewhere = verdict(notice(&"000.00.00.G22".parse().unwrap()));
        assert!(
            matches!(&elsewhere, Verdict::Refused(r) if r.reason.contains("not served below quangnam")),
            "{elsewhere:?}"
        );
    }

    /// A relay's registration of a new agency and that agency's first
    /// document, taken in one batch: the document is routed by the
    /// registration before it, not refused for an agency not yet bound.
    #[test]
    fn a_new_agencys_first_document_in_its_registrations_batch_is_taken() {
        let f = Fixture::new();
        let hub = hub_granting_quangnam(&f);
        let district = "001.00.10.H47";
        let registration = registration(&f, district, "quangnam");
        let first = verified(&f, district, &["000.00.00.G22"]);
        let g22: OrganId = "000.00.00.G22".parse().unwrap();
        let (verdicts, _) = hub
            .accept_batch(
                vec![(registration, None), (first, Some(vec![g22]))],
                &child("quangnam"),
            )
            .unwrap();
        assert!(
            matches!(verdicts[..], [Verdict::Stored, Verdict::Stored]),
            "{verdicts:?}"
        );
    }

    /// A refused document whose sender cannot be sent the notice (here: no
    /// longer routable from this hub) is still dead-lettered: the queue
    /// behind it goes on.
    #[test]
    fn a_refusal_whose_notice_cannot_be_made_still_clears_the_queue() {
        let f = Fixture::new();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let hub = f.hub(store.clone());
        let v = verified(&f, "000.00.00.G22", &["000.00.00.H41"]);
        hub.accept(v, &child("vpcp"), None).unwrap();
        hub.close().unwrap();
        drop(hub);
        // vpcp (G22) is gone from the configuration.
        let hub = f.hub_with(store.clone(), &[("000.00.00.H41", "nghean")]);
        hub.queue_reject("child:nghean", 1, Code::InvalidArgument as i32, "refused")
            .unwrap();
        assert_eq!(hub.queue_depth("child:nghean"), 0);
        assert_eq!(store.scan(Space::Dead, &[], None, 10).unwrap().len(), 1);
    }

    /// The peer of `queue` refuses its first entry for good.
    fn refuse_head(node: &NodeState, queue: &str) {
        refuse_head_with(node, queue, Code::NotFound, "not here");
    }

    /// The peer of `queue` refuses its first entry for good, with `code`
    /// and `reason`.
    fn refuse_head_with(node: &NodeState, queue: &str, code: Code, reason: &str) {
        let (seq, _) = node.queue_peek(queue, None, 1).unwrap().remove(0);
        assert!(node.queue_reject(queue, seq, code as i32, reason).unwrap());
    }

    /// Relay quangnam (H47, under a parent) with one child, `child`.
    fn relay_with_child(f: &Fixture, child: &str) -> Arc<NodeState> {
        let mut routing = RoutingTable::new(true);
        routing.add_local("000.00.00.H47".parse().unwrap());
        routing.add_child(child.parse().unwrap());
        f.state(
            "quangnam",
            routing,
            vec![f.signer("000.00.00.H47")],
            Some(f.node_signer("quangnam")),
            Arc::new(MemoryStore::new()),
        )
    }

    /// An update that adds a district reaches it through its relay, which
    /// never saw the original (it went to a ministry); one that names a
    /// district the original did not go to, without adding it, does not.
    #[test]
    fn an_update_adding_a_district_passes_a_relay_the_original_never_passed() {
        let f = Fixture::new();
        let relay = relay_with_child(&f, "dienban");
        let district: OrganId = "001.00.10.H47".parse().unwrap();
        let mut routing = (*relay.routing()).clone();
        routing.add_child_organ(district.clone(), "dienban".parse().unwrap());
        *relay.routes.write().unwrap() = Arc::new(routing);
        let update = |added: bool| {
            let header = pb::Header {
                format_version: envelope::FORMAT_VERSION,
                doc_id: DocId::new_v7().to_string(),
                kind: pb::Kind::Document as i32,
                from: "000.00.00.G22".into(),
                to: vec![district.to_string()],
                subject: "Bổ sung nơi nhận".into(),
                business_type: BusinessType::Update as i32,
                target_doc_id: DocId::new_v7().to_string(),
                recipient_changes: vec![pb::RecipientChange {
                    organ: district.to_string(),
                    added,
                }],
                ..Default::default()
            };
            f.seal_verified(&header)
        };
        let parent = Origin::Parent("hub".parse().unwrap());
        let to = [district.clone()];
        let err = relay.accept(update(false), &parent, Some(&to)).unwrap_err();
        assert!(
            err.to_string().contains("did not send through this node"),
            "{err}"
        );
        relay.accept(update(true), &parent, Some(&to)).unwrap();
        assert_eq!(relay.queue_depth("child:dienban"), 1, "on to the district");
    }

    /// A relay that sent a district's document up does not take it back
    /// from its parent as a duplicate (the parent's directory places the
    /// recipient below the relay while a change propagates): it is checked,
    /// and refused, so that the hub keeps it and its sender hears.
    #[test]
    fn what_a_relay_sent_up_is_not_a_duplicate_when_the_parent_sends_it_down() {
        let f = Fixture::new();
        let relay = relay_with_child(&f, "dienban");
        let district: OrganId = "001.00.10.H47".parse().unwrap();
        let mut routing = (*relay.routing()).clone();
        routing.add_child_organ(district.clone(), "dienban".parse().unwrap());
        *relay.routes.write().unwrap() = Arc::new(routing);
        let g22: OrganId = "000.00.00.G22".parse().unwrap();
        let v = f.verified(district.as_str(), &[g22.as_str()]);
        let to = std::slice::from_ref(&g22);
        relay
            .accept(v.clone(), &child("dienban"), Some(to))
            .unwrap();
        assert_eq!(relay.queue_depth("parent"), 1, "sent up");
        assert!(matches!(
            relay
                .accept(v.clone(), &child("dienban"), Some(to))
                .unwrap(),
            Accepted::Duplicate(_)
        ));
        let parent = Origin::Parent("hub".parse().unwrap());
        let e = relay.accept(v, &parent, Some(to)).unwrap_err();
        assert!(e.to_string().contains("served below this node"), "{e}");
    }

    /// At a relay, a requeue sends nothing back up to the parent it came
    /// from (its recipient left the relay's subtree: the parent routes it),
    /// and puts a directory change the parent refused back on its queue.
    #[test]
    fn a_relays_requeue_sends_nothing_back_up_and_keeps_directory_changes() {
        let f = Fixture::new();
        let relay = relay_with_child(&f, "dienban");
        let district: OrganId = "001.00.10.H47".parse().unwrap();
        let mut routing = (*relay.routing()).clone();
        routing.add_child_organ(district.clone(), "dienban".parse().unwrap());
        *relay.routes.write().unwrap() = Arc::new(routing);
        let v = f.verified("000.00.00.G22", &[district.as_str()]);
        let id = v.doc_id;
        let parent = Origin::Parent("hub".parse().unwrap());
        relay
            .accept(v, &parent, Some(std::slice::from_ref(&district)))
            .unwrap();
        // The district leaves the relay's subtree; its old node refuses it.
        let mut routing = RoutingTable::new(true);
        routing.add_local("000.00.00.H47".parse().unwrap());
        routing.add_child("dienban".parse().unwrap());
        *relay.routes.write().unwrap() = Arc::new(routing);
        refuse_head(&relay, "child:dienban");
        assert_eq!(relay.dead_count(), 1);
        // Its sender's undeliverable notice is on its way up.
        let notices = relay.queue_depth("parent");
        let s = tonic::Status::from(relay.requeue(&id, None).unwrap_err());
        assert!(s.message().contains("the parent routes it"), "{s:?}");
        assert_eq!(relay.queue_depth("parent"), notices, "not sent back up");

        // A directory change the parent refused goes back to the parent.
        relay
            .change_directory(envelope::DirectoryFact {
                remove: false,
                organ: "002.00.10.H47".parse().unwrap(),
                name: "Xã".into(),
                parent: Some("000.00.00.H47".parse().unwrap()),
                node: Some("dienban".parse().unwrap()),
            })
            .unwrap();
        let (seq, change) = relay
            .queue_peek("parent", None, 16)
            .unwrap()
            .into_iter()
            .find(|(_, e)| e.kind == pb::Kind::Directory as i32)
            .unwrap();
        relay
            .queue_reject("parent", seq, Code::InvalidArgument as i32, "not now")
            .unwrap();
        assert_eq!(relay.queue_depth("parent"), notices);
        assert_eq!(
            relay
                .requeue(&change.doc_id.parse().unwrap(), None)
                .unwrap()
                .entries,
            1
        );
        assert_eq!(
            relay.queue_depth("parent"),
            notices + 1,
            "back to the parent"
        );
    }

    /// A relay's requeue of an entry the parent sent down for two districts,
    /// one of which has left the relay's subtree since: the other goes, and
    /// the part for the one that left stays a dead letter, told with why
    /// (the parent routes it), until discarded.
    #[test]
    fn a_relays_requeue_sends_the_recipients_it_still_serves_and_keeps_the_rest() {
        relays_partial_requeue(false, false);
    }

    /// A hub's dead letter for two agencies of one child, one of which has
    /// left the directory since: the other goes, the one that cannot be
    /// routed stays, told with why.
    #[test]
    fn a_requeue_sends_the_recipients_still_known_and_keeps_one_gone_from_the_directory() {
        let f = Fixture::new();
        let kids = [
            ("000.00.00.G22", "vpcp"),
            ("000.00.00.H41", "nghean"),
            ("000.00.00.H42", "nghean"),
        ];
        let hub = f.hub_with(Arc::new(MemoryStore::new()), &kids);
        let v = f.verified("000.00.00.G22", &["000.00.00.H41", "000.00.00.H42"]);
        let id = v.doc_id;
        hub.accept(v, &child("vpcp"), None).unwrap();
        let (seq, e) = hub.queue_peek("child:nghean", None, 1).unwrap().remove(0);
        assert_eq!(e.recipients.len(), 2);
        hub.queue_reject("child:nghean", seq, Code::InvalidArgument as i32, "no")
            .unwrap();
        let mut routing = RoutingTable::new(false);
        for (organ, node) in &kids[..2] {
            routing.add_child_organ(organ.parse().unwrap(), node.parse().unwrap());
        }
        *hub.routes.write().unwrap() = Arc::new(routing);

        let done = hub.requeue(&id, None).unwrap();
        assert_eq!((done.entries, done.refused_total), (1, 1), "{done:?}");
        assert!(
            done.refused[0]
                .2
                .contains("cannot be routed again: unknown recipient 000.00.00.H42"),
            "{done:?}"
        );
        let (_, e) = hub.queue_peek("child:nghean", None, 1).unwrap().remove(0);
        assert_eq!(e.recipients, vec!["000.00.00.H41".to_owned()]);
        let dead = hub.dead("child:nghean").unwrap();
        assert_eq!(
            dead[0].entry.as_ref().unwrap().recipients,
            vec!["000.00.00.H42".to_owned()]
        );
    }

    /// The same of an entry parked after its deadline: the part that stays
    /// is still parked, counted, and held for.
    #[test]
    fn a_relays_requeue_of_a_parked_entry_keeps_the_rest_parked() {
        relays_partial_requeue(true, false);
    }

    /// The same through a requeue of everything held.
    #[test]
    fn a_relays_requeue_of_everything_keeps_the_part_that_cannot_go() {
        relays_partial_requeue(false, true);
    }

    fn relays_partial_requeue(parked: bool, all: bool) {
        let f = Fixture::new();
        let relay = relay_with_child(&f, "dienban");
        let (stays, leaves): (OrganId, OrganId) = (
            "001.00.10.H47".parse().unwrap(),
            "002.00.10.H47".parse().unwrap(),
        );
        let mut routing = (*relay.routing()).clone();
        routing.add_child_organ(stays.clone(), "dienban".parse().unwrap());
        routing.add_child_organ(leaves.clone(), "dienban".parse().unwrap());
        *relay.routes.write().unwrap() = Arc::new(routing);
        // Far enough ahead to be a deadline when it is taken, on a slow host.
        let due = now_ms() + 1500;
        let v = f.seal_verified(&pb::Header {
            format_version: envelope::FORMAT_VERSION,
            doc_id: DocId::new_v7().to_string(),
            kind: pb::Kind::Document as i32,
            from: "000.00.00.G22".into(),
            to: vec![stays.to_string(), leaves.to_string()],
            subject: "Hai huyện".into(),
            due_at_ms: if parked { due } else { 0 },
            // Kept here for its deliveries (what `pending` counts).
            attachments: vec![pb::AttachmentRef {
                name: "phu-luc.pdf".into(),
                content_type: "application/pdf".into(),
                size: 3,
                sha256: relay.blobs.put(b"pdf").unwrap().0.to_vec(),
            }],
            ..Default::default()
        });
        let (id, from) = (v.doc_id, v.from.to_string());
        let both = [stays.clone(), leaves.clone()];
        let parent = Origin::Parent("hub".parse().unwrap());
        relay.accept(v, &parent, Some(&both)).unwrap();
        if parked {
            while now_ms() <= due {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            assert_eq!(relay.park_overdue().unwrap(), 1);
        } else {
            refuse_head(&relay, "child:dienban");
        }
        let held = |relay: &NodeState| {
            if parked {
                relay.parked(10, &mut Vec::new()).unwrap()
            } else {
                relay
                    .dead("child:dienban")
                    .unwrap()
                    .into_iter()
                    .map(|d| ("child:dienban".to_owned(), d))
                    .collect()
            }
        };
        let counted = |relay: &NodeState| {
            if parked {
                relay.parked_count()
            } else {
                relay.dead_count()
            }
        };
        // One district leaves the relay's subtree.
        let mut routing = RoutingTable::new(true);
        routing.add_local("000.00.00.H47".parse().unwrap());
        routing.add_child("dienban".parse().unwrap());
        routing.add_child_organ(stays.clone(), "dienban".parse().unwrap());
        *relay.routes.write().unwrap() = Arc::new(routing);
        let notices = relay.queue_depth("parent");

        let done = if all {
            relay.requeue_all(None).unwrap()
        } else {
            relay.requeue(&id, None).unwrap()
        };
        assert_eq!((done.entries, done.refused_total), (1, 1));
        let (_, e) = relay
            .queue_peek("child:dienban", None, 1)
            .unwrap()
            .remove(0);
        assert_eq!(e.recipients, vec![stays.to_string()]);
        assert_eq!(done.refused.len(), 1, "{:?}", done.refused);
        let why = &done.refused[0].2;
        assert!(
            why.contains("002.00.10.H47 left this node's subtree; the parent routes it")
                && why.contains("its other recipients were requeued"),
            "{why}"
        );
        assert_eq!(done.refused[0].1, "000.00.00.G22");
        assert_eq!(relay.queue_depth("parent"), notices, "not sent back up");
        // The trail tells the split: who went, and what stays and why.
        let trail = relay.audit_trail(&id.to_string()).unwrap();
        assert!(
            trail.iter().any(|a| a.event == "requeued"
                && a.detail
                    .starts_with("on child:dienban for 001.00.10.H47 by an operator")),
            "{trail:?}"
        );
        assert!(
            trail
                .iter()
                .any(|a| a.event == "kept held" && a.detail.contains("the parent routes it")),
            "{trail:?}"
        );
        let left = held(&relay);
        assert_eq!(left.len(), 1);
        assert_eq!(
            left[0].1.entry.as_ref().unwrap().recipients,
            vec![leaves.to_string()]
        );
        // Shown held for why it stays now, not for what first held it.
        assert!(
            left[0].1.reason.starts_with(
                "kept held when its other recipients were requeued: 002.00.10.H47 left this node's subtree"
            ),
            "{:?}",
            left[0].1
        );
        assert_eq!(left[0].1.code, Code::FailedPrecondition as i32);
        assert_eq!(counted(&relay), 1);
        let pending = |relay: &NodeState| relay.load_doc(&from, &id.to_string()).unwrap().pending;
        // Held for the queued part, and for the part still parked (a dead
        // letter is done with).
        assert_eq!(pending(&relay), if parked { 2 } else { 1 });
        if parked {
            let snap = relay.queue_snapshot().unwrap();
            let overdue: Vec<_> = snap
                .overdue_counts
                .keys()
                .map(|(r, _, parked)| (r.as_str(), *parked))
                .collect();
            // The part requeued has a new deadline; the part parked is
            // still counted overdue, for its recipient alone.
            assert_eq!(overdue, vec![("002.00.10.H47", true)]);
        }

        // Requeued again, nothing can go: refused, nothing changes.
        let s = tonic::Status::from(relay.requeue(&id, None).unwrap_err());
        assert!(s.message().contains("the parent routes it"), "{s:?}");
        assert_eq!(relay.queue_depth("child:dienban"), 1);

        // The part that went is refused again: that one goes once more, the
        // part that cannot go is listed, not in its way.
        refuse_head(&relay, "child:dienban");
        let again = relay.requeue(&id, None).unwrap();
        assert_eq!((again.entries, again.refused_total), (1, 1), "{again:?}");
        assert!(
            again.refused[0].2.contains("the parent routes it"),
            "{again:?}"
        );
        assert_eq!(relay.queue_depth("child:dienban"), 1);

        assert_eq!(
            relay.discard(&id, None, "sent again from the hub").unwrap(),
            1
        );
        assert_eq!(counted(&relay), 0);
        assert_eq!(pending(&relay), 1, "the part queued");
    }

    /// A relay claims no agency the national directory places elsewhere, but
    /// may move one it places on the relay itself to a district below it.
    #[test]
    fn a_relay_registers_what_is_its_own_and_nothing_placed_elsewhere() {
        let f = Fixture::new();
        let relay = relay_with_child(&f, "dienban");
        let entry = |organ: &str, node: &str| pb::AgencyEntry {
            organ: organ.into(),
            name: String::new(),
            parent: "000.00.00.H47".into(),
            node: node.into(),
        };
        relay
            .set_directory(&pb::Directory {
                version: 1,
                agencies: vec![
                    entry("000.00.00.G22", "vpcp"),
                    entry("003.00.10.H47", "quangnam"),
                ],
            })
            .unwrap();
        let add = |organ: &str| {
            relay.change_directory(envelope::DirectoryFact {
                remove: false,
                organ: organ.parse().unwrap(),
                name: "Huyện".into(),
                parent: Some("000.00.00.H47".parse().unwrap()),
                node: Some("dienban".parse().unwrap()),
            })
        };
        add("003.00.10.H47").unwrap();
        let e = add("000.00.00.G22").unwrap_err().to_string();
        assert!(
            e.contains("already in the directory, served by node vpcp"),
            "{e}"
        );
    }

    /// A directory of version 0 from the parent (a relay that has not met its
    /// own parent yet) names agencies all the same: they are still known after
    /// a restart, and the merge stays incomplete.
    #[test]
    fn an_incomplete_directory_from_the_parent_is_kept_across_a_restart() {
        let f = Fixture::new();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let district: OrganId = "001.00.10.H47".parse().unwrap();
        let edge = f.edge(store.clone());
        edge.set_directory(&pb::Directory {
            version: 0,
            agencies: vec![pb::AgencyEntry {
                organ: district.to_string(),
                name: "Huyện Duy Xuyên".into(),
                parent: "000.00.00.H47".into(),
                node: "duyxuyen".into(),
            }],
        })
        .unwrap();
        assert!(edge.directory().entries.contains_key(&district));
        edge.close().unwrap();
        drop(edge);
        let edge = f.edge(store);
        let d = edge.directory();
        assert!(d.entries.contains_key(&district), "known after the restart");
        assert_eq!(d.version, 0, "still incomplete");
    }

    /// A relay that has not met its parent yet (every merge has version 0)
    /// still publishes what its operator registers, to its own routing and
    /// directory and so to its children.
    #[test]
    fn a_registration_before_the_parents_first_directory_is_published() {
        let f = Fixture::new();
        let relay = relay_with_child(&f, "duyxuyen");
        let changes = relay.directory_changes();
        let district: OrganId = "001.00.10.H47".parse().unwrap();
        relay
            .change_directory(envelope::DirectoryFact {
                remove: false,
                organ: district.clone(),
                name: "Huyện Duy Xuyên".into(),
                parent: Some("000.00.00.H47".parse().unwrap()),
                node: Some("duyxuyen".parse().unwrap()),
            })
            .unwrap();
        assert!(relay.directory().entries.contains_key(&district));
        assert!(changes.has_changed().unwrap(), "children are told");
    }

    /// A child taken out of the configuration leaves its queue behind: its
    /// overdue documents are parked (their senders hear), and an operator's
    /// requeue routes them again, to where the directory now puts their
    /// recipients.
    #[test]
    fn a_removed_childs_queue_is_parked_and_requeued_where_its_agencies_are_now() {
        let f = Fixture::new();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let hub = f.hub(store.clone());
        // Far enough ahead to be a deadline when it is taken, on a slow host
        // (30 ms was not always: the default deadline was then taken).
        let due = now_ms() + 1500;
        let v = f.verified_due("000.00.00.G22", "000.00.00.H41", due);
        let id = v.doc_id;
        hub.accept(v, &child("vpcp"), None).unwrap();
        assert_eq!(hub.queue_depth("child:nghean"), 1);
        // Past the document's due time (the deadline it carries).
        while now_ms() <= due {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(hub.park_overdue().unwrap(), 1);
        hub.close().unwrap();
        drop(hub);
        // H41 is now served by another node; nghean is gone from the config.
        let hub = f.hub_with(
            store,
            &[("000.00.00.G22", "vpcp"), ("000.00.00.H41", "nghean2")],
        );
        assert_eq!(hub.requeue(&id, None).unwrap().entries, 1);
        assert_eq!(hub.queue_depth("child:nghean2"), 1, "routed again");
    }

    /// A resend of what a hub took, after its sender's agency moved to
    /// another child (the first acknowledgement was lost), is a duplicate:
    /// refused, its sender would dead-letter a document that was passed on.
    /// A new document from the old child for that agency is still refused.
    #[test]
    fn a_resend_after_its_senders_agency_moved_is_a_duplicate() {
        let f = Fixture::new();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let hub = f.hub(store.clone());
        let v = f.verified("000.00.00.G22", &["000.00.00.H41"]);
        hub.accept(v.clone(), &child("vpcp"), None).unwrap();
        hub.close().unwrap();
        drop(hub);
        let moved = [("000.00.00.G22", "vpcp2"), ("000.00.00.H41", "nghean")];
        let hub = f.hub_with(store, &moved);
        assert!(matches!(
            hub.accept(v, &child("vpcp"), None).unwrap(),
            Accepted::Duplicate(_)
        ));
        let fresh = f.verified("000.00.00.G22", &["000.00.00.H41"]);
        assert!(hub.accept(fresh, &child("vpcp"), None).is_err());
        assert_eq!(hub.queue_depth("child:nghean"), 1, "taken once");
    }

    /// A transfer refused for good is listed with the refusal, and an
    /// operator's requeue (once the cause is fixed) sends it again: what its
    /// document keeps here is kept again until it is done. Once that has been
    /// released, the requeue is refused with the reason, and changes nothing.
    #[test]
    fn a_dead_letter_is_listed_and_requeued_while_its_bytes_are_kept() {
        let mut f = Fixture::new();
        f.storage.envelope_retention_ms = Some(0);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let hub = f.hub(store.clone());
        let v = f.verified("000.00.00.G22", &["000.00.00.H41"]);
        let (id, from) = (v.doc_id, v.from.to_string());
        hub.accept(v, &child("vpcp"), None).unwrap();
        let reject = |hub: &NodeState| {
            refuse_head_with(
                hub,
                "child:nghean",
                Code::ResourceExhausted,
                "over the limit",
            );
        };
        reject(&hub);
        let snap = hub.queue_snapshot().unwrap();
        assert_eq!(snap.dead_total, 1);
        let d = &snap.dead[0];
        assert_eq!(
            (d.doc_id.as_str(), d.queue.as_str()),
            (id.to_string().as_str(), "child:nghean")
        );
        assert_eq!(
            (d.code.as_str(), d.reason.as_str()),
            ("ResourceExhausted", "over the limit")
        );
        assert_eq!(d.recipients, ["000.00.00.H41"]);
        assert_eq!(hub.load_doc(&from, &id.to_string()).unwrap().pending, 0);

        assert_eq!(hub.requeue(&id, None).unwrap().entries, 1);
        assert_eq!(hub.queue_depth("child:nghean"), 1, "on its way again");
        assert_eq!(hub.queue_snapshot().unwrap().dead_total, 0);
        assert_eq!(hub.load_doc(&from, &id.to_string()).unwrap().pending, 1);
        // Its envelope retention fell due when it was refused: kept while it is queued.
        hub.release_due().unwrap();
        assert_eq!(
            hub.load_doc(&from, &id.to_string())
                .unwrap()
                .envelope_removed_at_ms,
            0
        );

        // Refused again, and its envelope released meanwhile: nothing to send.
        reject(&hub);
        hub.release_due().unwrap();
        let s = tonic::Status::from(hub.requeue(&id, None).unwrap_err());
        assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
        assert!(s.message().contains("released"), "{s:?}");
        assert!(s.message().contains("under a new doc_id"), "{s:?}");
        assert_eq!(hub.queue_snapshot().unwrap().dead_total, 1, "still listed");
        assert_eq!(hub.queue_depth("child:nghean"), 0);
        // Counted again at the next start.
        hub.close().unwrap();
        drop(hub);
        let hub = f.hub(store);
        assert_eq!(hub.dead_count(), 1);
        assert_eq!(hub.queue_snapshot().unwrap().dead.len(), 1);
    }

    /// A document refused, requeued and delivered keeps its envelope for the
    /// whole retention period after that delivery, not after the refusal
    /// (whose schedule falls due first and is not acted on).
    #[test]
    fn retention_runs_from_the_last_delivery_after_a_requeue() {
        let mut f = Fixture::new();
        let keep = 2_000;
        f.storage.envelope_retention_ms = Some(keep);
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let v = f.verified("000.00.00.G22", &["000.00.00.H41"]);
        let (id, from) = (v.doc_id, v.from.to_string());
        hub.accept(v, &child("vpcp"), None).unwrap();
        let head = |hub: &NodeState| hub.queue_peek("child:nghean", None, 1).unwrap().remove(0).0;
        let refused_at = now_ms();
        let refused = Code::ResourceExhausted as i32;
        hub.queue_reject("child:nghean", head(&hub), refused, "over the limit")
            .unwrap();
        hub.requeue(&id, None).unwrap();
        let wait_until = |t: i64| {
            while now_ms() <= t {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        };
        wait_until(refused_at + keep as i64 / 2);
        let delivered_at = now_ms();
        hub.queue_ack("child:nghean", head(&hub)).unwrap();
        // The ack schedules the release from its own clock: a slow host may
        // pass a while between the two.
        let acked_at = now_ms();
        let removed = |hub: &NodeState| {
            hub.load_doc(&from, &id.to_string())
                .unwrap()
                .envelope_removed_at_ms
                != 0
        };
        // The refusal's schedule is due; the delivery's is not yet.
        wait_until(refused_at + keep as i64 + 50);
        hub.release_due().unwrap();
        if now_ms() < delivered_at + keep as i64 {
            assert!(!removed(&hub), "kept for its period after the delivery");
        }
        wait_until(acked_at + keep as i64 + 50);
        hub.release_due().unwrap();
        assert!(removed(&hub));
    }

    /// An operator drops what was dealt with otherwise: a dead letter by
    /// doc_id, then every parked entry of a queue. Each is audited with the
    /// reason, and a parked document's files start their retention (they
    /// were held for it); nothing is left to list.
    #[test]
    fn discarded_entries_are_gone_audited_and_release_their_files() {
        let mut f = Fixture::new();
        f.storage.envelope_retention_ms = Some(0);
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let refused = f.verified("000.00.00.G22", &["000.00.00.H41"]);
        let refused_id = refused.doc_id;
        hub.accept(refused, &child("vpcp"), None).unwrap();
        refuse_head_with(&hub, "child:nghean", Code::InvalidArgument, "no");
        // Far enough ahead to be a deadline when it is taken, on a slow host.
        let due = now_ms() + 1500;
        let parked = f.verified_due("000.00.00.G22", "000.00.00.H41", due);
        let (parked_id, from) = (parked.doc_id.to_string(), parked.from.to_string());
        hub.accept(parked, &child("vpcp"), None).unwrap();
        while now_ms() <= due {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(hub.park_overdue().unwrap(), 1);
        assert_eq!(
            hub.load_doc(&from, &parked_id).unwrap().pending,
            1,
            "held for it"
        );

        assert_eq!(
            hub.discard(&refused_id, None, "sent again as 7817")
                .unwrap(),
            1
        );
        assert_eq!(hub.dead_count(), 0);
        let trail = hub.audit_trail(&refused_id.to_string()).unwrap();
        let d = trail
            .iter()
            .find(|e| e.event == "discarded")
            .expect("audited");
        assert!(d.detail.contains("sent again as 7817"), "{}", d.detail);

        assert_eq!(
            hub.discard_all(Some("child:nghean"), "done by hand")
                .unwrap(),
            1
        );
        let snap = hub.queue_snapshot().unwrap();
        assert!(snap.overdue.is_empty() && snap.dead.is_empty());
        assert_eq!(hub.load_doc(&from, &parked_id).unwrap().pending, 0);
        hub.release_due().unwrap();
        assert_ne!(
            hub.load_doc(&from, &parked_id)
                .unwrap()
                .envelope_removed_at_ms,
            0,
            "its retention ran"
        );
        let s = tonic::Status::from(hub.discard(&refused_id, None, "again").unwrap_err());
        assert_eq!(s.code(), Code::NotFound);
    }

    /// A held entry that cannot be read stops neither a requeue nor a
    /// discard of another document, nor the operator's lists (it is listed
    /// as such, with an alert), and a discard of all drops it, counted out
    /// of the dead letters.
    #[test]
    fn an_unreadable_held_entry_is_dropped_by_a_discard_of_all() {
        let f = Fixture::new();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let hub = f.hub(store.clone());
        let v = f.verified("000.00.00.G22", &["000.00.00.H41"]);
        let id = v.doc_id;
        hub.accept(v, &child("vpcp"), None).unwrap();
        refuse_head_with(&hub, "child:nghean", Code::InvalidArgument, "no");
        hub.close().unwrap();
        drop(hub);
        let mut b = Batch::new();
        b.put(
            Space::Dead,
            Key::new().str("child:nghean").u64(u64::MAX).build(),
            b"not a record".to_vec(),
        );
        store.apply(b).unwrap();
        let hub = f.hub(store);
        assert_eq!(hub.dead_count(), 2);
        let snap = hub.queue_snapshot().unwrap();
        assert_eq!(snap.dead.len(), 2, "the readable one is listed too");
        let bad = snap.dead.iter().find(|d| d.doc_id.is_empty()).unwrap();
        assert_eq!(bad.code, "DataLoss");
        assert!(
            bad.reason
                .starts_with("this held entry cannot be read (corrupt record")
                && bad
                    .reason
                    .ends_with("truc discard --all --queue child:nghean drops it"),
            "{}",
            bad.reason
        );
        let alerts = hub.alerts(&Default::default(), &Ok(snap));
        assert!(
            alerts.iter().any(|a| a.kind == "store"
                && a.detail.starts_with("1 held entry cannot be read")
                && a.detail
                    .contains("the first on child:nghean: corrupt record")),
            "{alerts:?}"
        );
        assert_eq!(
            hub.requeue(&id, None).unwrap().entries,
            1,
            "the other is not in the way"
        );
        assert_eq!(hub.discard_all(Some("child:nghean"), "corrupt").unwrap(), 1);
        assert_eq!(hub.dead_count(), 0);
    }

    /// A requeue of everything goes through more dead letters than one
    /// write takes (256 per write), each once.
    #[test]
    fn requeue_all_goes_through_every_batch_once() {
        requeue_and_discard_all_of_many(false);
    }

    /// A requeue (or discard) of everything whose write fails part way keeps
    /// what it did before, and its error says how many that was.
    #[test]
    fn a_requeue_of_everything_that_fails_part_way_says_what_it_did() {
        requeue_and_discard_all_of_many(true);
    }

    fn requeue_and_discard_all_of_many(fail_second_write: bool) {
        let f = Fixture::new();
        let (store, faults) = truc_store::FaultyStore::new(MemoryStore::new());
        let hub = f.hub(Arc::new(store));
        // Failing writes part way: enough for a discard and a requeue to
        // each get through one write of 256 before the next fails.
        let n = if fail_second_write { 600 } else { 300 };
        let batch = (0..n)
            .map(|_| {
                let v = f.verified("000.00.00.G22", &["000.00.00.H41"]);
                (v, Some(vec!["000.00.00.H41".parse().unwrap()]))
            })
            .collect();
        hub.accept_batch(batch, &child("vpcp")).unwrap();
        let seqs: Vec<u64> = hub
            .queue_peek("child:nghean", None, n)
            .unwrap()
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        for seq in seqs {
            hub.queue_reject("child:nghean", seq, Code::InvalidArgument as i32, "no")
                .unwrap();
        }
        assert_eq!(hub.dead_count(), n as u64);
        if fail_second_write {
            let fail_next_but_one = || {
                let next = faults.applies.load(Ordering::SeqCst) + 2;
                faults.fail_apply_from.store(next, Ordering::SeqCst);
            };
            fail_next_but_one();
            let s = tonic::Status::from(hub.discard_all(None, "sent again").unwrap_err());
            assert!(
                s.message()
                    .ends_with("(256 held entries discarded before it)"),
                "{s:?}"
            );
            assert_eq!(hub.dead_count(), n as u64 - 256);
            fail_next_but_one();
            let s = tonic::Status::from(hub.requeue_all(Some("child:nghean")).unwrap_err());
            assert!(
                s.message().ends_with("(256 entries requeued before it)"),
                "{s:?}"
            );
            assert_eq!(hub.queue_depth("child:nghean"), 256);
            // The store takes nothing now: none went, nothing claimed.
            let s = tonic::Status::from(hub.discard_all(None, "x").unwrap_err());
            assert!(!s.message().contains("before it"), "none went: {s:?}");
            faults.fail_apply_from.store(0, Ordering::SeqCst);
            let done = hub.requeue_all(Some("child:nghean")).unwrap();
            assert_eq!((done.entries, done.refused_total), (n - 512, 0));
            assert_eq!(hub.queue_depth("child:nghean"), n as u64 - 256);
            assert_eq!(hub.dead_count(), 0);
            return;
        }
        let done = hub.requeue_all(Some("child:nghean")).unwrap();
        assert_eq!((done.entries, done.refused_total), (n, 0));
        assert_eq!(hub.dead_count(), 0);
        assert_eq!(hub.queue_depth("child:nghean"), n as u64);
    }

    /// A requeue of everything that fails part way also tells what could
    /// not go in the writes that went (here an entry that cannot be read),
    /// which its list would have named had it finished.
    #[test]
    fn a_requeue_of_everything_that_fails_part_way_names_what_could_not_go() {
        let f = Fixture::new();
        let (store, faults) = truc_store::FaultyStore::new(MemoryStore::new());
        let store = Arc::new(store);
        let hub = f.hub(store.clone());
        let batch = (0..300)
            .map(|_| {
                let v = f.verified("000.00.00.G22", &["000.00.00.H41"]);
                (v, Some(vec!["000.00.00.H41".parse().unwrap()]))
            })
            .collect();
        hub.accept_batch(batch, &child("vpcp")).unwrap();
        for (seq, _) in hub.queue_peek("child:nghean", None, 300).unwrap() {
            hub.queue_reject("child:nghean", seq, Code::InvalidArgument as i32, "no")
                .unwrap();
        }
        hub.close().unwrap();
        drop(hub);
        // First of the queue's dead letters, so in the write that goes.
        let mut b = Batch::new();
        b.put(
            Space::Dead,
            Key::new().str("child:nghean").u64(0).build(),
            b"not a record".to_vec(),
        );
        store.apply(b).unwrap();
        let hub = f.hub(store);
        let next_but_one = faults.applies.load(Ordering::SeqCst) + 2;
        faults.fail_apply_from.store(next_but_one, Ordering::SeqCst);
        let s = tonic::Status::from(hub.requeue_all(Some("child:nghean")).unwrap_err());
        assert!(
            s.message().contains(
                "(255 entries requeued before it; 1 could not go, the first: a held entry on child:nghean cannot be read"
            ) && s.message().ends_with("; requeue again to list them all)"),
            "{s:?}"
        );
        assert_eq!(hub.queue_depth("child:nghean"), 255);
    }

    /// Two senders used one doc_id (each picks its own) and both documents
    /// were refused: a requeue by doc_id alone is refused, naming them; with
    /// the sender named, that one goes.
    #[test]
    fn a_requeue_names_the_sender_when_two_used_the_doc_id() {
        let f = Fixture::new();
        let hub = f.hub_with(
            Arc::new(MemoryStore::new()),
            &[
                ("000.00.00.G22", "vpcp"),
                ("000.00.00.H14", "caobang"),
                ("000.00.00.H41", "nghean"),
            ],
        );
        let id = DocId::new_v7();
        for (from, via) in [("000.00.00.G22", "vpcp"), ("000.00.00.H14", "caobang")] {
            let v = f.seal_verified(&pb::Header {
                format_version: envelope::FORMAT_VERSION,
                doc_id: id.to_string(),
                kind: pb::Kind::Document as i32,
                from: from.into(),
                to: vec!["000.00.00.H41".into()],
                subject: "Cùng số".into(),
                ..Default::default()
            });
            hub.accept(v, &child(via), None).unwrap();
            refuse_head_with(&hub, "child:nghean", Code::InvalidArgument, "no");
        }
        let s = tonic::Status::from(hub.requeue(&id, None).unwrap_err());
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(
            s.message().contains("000.00.00.G22") && s.message().contains("000.00.00.H14"),
            "{s:?}"
        );
        assert_eq!(hub.queue_depth("child:nghean"), 0);
        assert_eq!(hub.requeue(&id, Some("000.00.00.G22")).unwrap().entries, 1);
        assert_eq!(hub.queue_depth("child:nghean"), 1);
        assert_eq!(hub.dead_count(), 1, "H14's stays");
        let s = tonic::Status::from(hub.discard(&id, Some("000.00.00.G22"), "x").unwrap_err());
        assert!(s.message().contains("only for 000.00.00.H14"), "{s:?}");
        assert_eq!(
            hub.discard(&id, Some("000.00.00.H14"), "sent again")
                .unwrap(),
            1
        );
        assert_eq!(hub.dead_count(), 0);
    }

    /// After a cause that held many is fixed, an operator requeues every
    /// parked entry and dead letter at once (of one queue, if named): each
    /// that cannot go (its bytes released) stays, told with the reason, and
    /// the others go.
    #[test]
    fn requeue_all_sends_what_it_can_and_tells_what_it_cannot() {
        let mut f = Fixture::new();
        f.storage.envelope_retention_ms = Some(0);
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let refuse_head = |hub: &NodeState| {
            refuse_head_with(
                hub,
                "child:nghean",
                Code::ResourceExhausted,
                "over the limit",
            );
        };
        // One dead letter whose envelope is released, then one kept.
        let released = f.verified("000.00.00.G22", &["000.00.00.H41"]);
        let released_id = released.doc_id.to_string();
        hub.accept(released, &child("vpcp"), None).unwrap();
        refuse_head(&hub);
        hub.release_due().unwrap();
        hub.accept(
            f.verified("000.00.00.G22", &["000.00.00.H41"]),
            &child("vpcp"),
            None,
        )
        .unwrap();
        refuse_head(&hub);
        assert_eq!(hub.dead_count(), 2);

        let none = hub.requeue_all(Some("child:caobang")).unwrap();
        assert_eq!((none.entries, none.refused.len()), (0, 0), "another queue");
        let done = hub.requeue_all(None).unwrap();
        assert_eq!((done.entries, done.refused_total), (1, 1));
        assert_eq!(hub.queue_depth("child:nghean"), 1);
        let [(doc_id, from, why)] = &done.refused[..] else {
            panic!("{:?}", done.refused)
        };
        assert_eq!((doc_id, from.as_str()), (&released_id, "000.00.00.G22"));
        assert!(why.contains("released"), "{why}");
        assert_eq!(hub.dead_count(), 1, "the one that cannot go stays");
    }

    /// Operators' pages list the earliest overdue documents only (an edge
    /// away for a weekend can leave tens of thousands parked), while the
    /// counts, the metric and the alert cover them all, queued (due dates
    /// shorter than any priority's deadline) and parked.
    #[test]
    fn the_overdue_list_is_cut_but_every_overdue_document_is_counted() {
        let f = Fixture::new();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let hub = f.hub(store.clone());
        let n = OVERDUE_SHOWN + 3;
        // Due soon (a due date already past is not a deadline, so far enough
        // ahead to be one when taken on a slow host), then past it.
        let due = now_ms() + 1500;
        let batch = (0..n)
            .map(|_| {
                let v = f.verified_due("000.00.00.G22", "000.00.00.H41", due);
                (v, Some(vec!["000.00.00.H41".parse().unwrap()]))
            })
            .collect();
        hub.accept_batch(batch, &child("vpcp")).unwrap();
        while now_ms() <= due {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let counted = |hub: &NodeState, parked: bool| {
            let snap = hub.queue_snapshot().unwrap();
            assert_eq!(snap.overdue.len(), OVERDUE_SHOWN);
            assert_eq!(
                snap.overdue_counts,
                BTreeMap::from([(("000.00.00.H41".to_owned(), 0, parked), n as u64)])
            );
            let alerts = hub.alerts(&Default::default(), &Ok(snap));
            let a = alerts.iter().find(|a| a.kind == "overdue").unwrap();
            assert!(
                a.detail.starts_with(&format!("{n} document(s)")),
                "{}",
                a.detail
            );
        };
        // Queued: their due dates made their deadlines short, and the
        // read goes through the queue for them; after a restart too.
        counted(&hub, false);
        hub.close().unwrap();
        drop(hub);
        let hub = f.hub(store.clone());
        counted(&hub, false);
        assert_eq!(hub.park_overdue().unwrap(), n);
        counted(&hub, true);
        // Parked ones are counted, not read: at the next start too, and
        // out of the counts once dealt with.
        hub.close().unwrap();
        drop(hub);
        let hub = f.hub(store);
        counted(&hub, true);
        assert_eq!(hub.parked_count(), n as u64);
        hub.discard_all(Some("child:nghean"), "sent again").unwrap();
        assert!(hub.queue_snapshot().unwrap().overdue_counts.is_empty());
        assert_eq!(hub.parked_count(), 0);
    }

    /// A document queued for an agency that has since moved to another child
    /// goes there: from a removed child's queue at the next sweep, before its
    /// deadline, and from a connected child's when that child refuses it.
    /// Its sender is not told it is undeliverable.
    #[test]
    fn a_document_queued_for_an_agency_that_moved_goes_where_it_is_now() {
        let f = Fixture::new();
        // A store whose hub queued one document for H41 at nghean, and the
        // entry's seq.
        let queued_at_nghean = || {
            let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
            let hub = f.hub(store.clone());
            hub.accept(
                f.verified("000.00.00.G22", &["000.00.00.H41"]),
                &child("vpcp"),
                None,
            )
            .unwrap();
            let (seq, _) = hub.queue_peek("child:nghean", None, 1).unwrap().remove(0);
            hub.close().unwrap();
            (store, seq)
        };
        let moved = [("000.00.00.G22", "vpcp"), ("000.00.00.H41", "nghean2")];
        let notices = |hub: &NodeState| {
            assert_eq!(
                hub.queue_depth("child:vpcp"),
                1,
                "the sender has the ACCEPTED receipt, and no notice"
            );
        };

        let (store, _) = queued_at_nghean();
        let hub = f.hub_with(store, &moved);
        assert_eq!(hub.park_overdue().unwrap(), 0, "nothing is overdue");
        assert_eq!(hub.queue_depth("child:nghean"), 0, "the old queue");
        assert_eq!(hub.queue_depth("child:nghean2"), 1, "routed again");
        notices(&hub);

        // Refused by the child it was queued for, which no longer serves it.
        let (store, seq) = queued_at_nghean();
        let hub = f.hub_with(store, &moved);
        let unserved = Code::NotFound as i32;
        hub.queue_reject(
            "child:nghean",
            seq,
            unserved,
            "no agency 000.00.00.H41 here",
        )
        .unwrap();
        assert_eq!(hub.queue_depth("child:nghean"), 0);
        assert_eq!(hub.queue_depth("child:nghean2"), 1, "routed again");
        assert!(
            hub.dead("child:nghean").unwrap().is_empty(),
            "not given up on"
        );
        notices(&hub);
    }

    /// An entry for two agencies that moved to two children becomes two
    /// entries: what the document keeps until it is passed on (attachments,
    /// envelope) is kept until both are done.
    #[test]
    fn an_entry_split_by_a_move_keeps_its_files_until_both_halves_are_done() {
        let mut f = Fixture::new();
        f.storage.envelope_retention_ms = Some(3_600_000);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let both = [
            ("000.00.00.G22", "vpcp"),
            ("000.00.00.H41", "nghean"),
            ("000.00.00.H14", "nghean"),
        ];
        let hub = f.hub_with(store.clone(), &both);
        let v = f.verified("000.00.00.G22", &["000.00.00.H41", "000.00.00.H14"]);
        let id = v.doc_id.to_string();
        hub.accept(v, &child("vpcp"), None).unwrap();
        assert_eq!(hub.queue_depth("child:nghean"), 1, "one entry for both");
        hub.close().unwrap();
        drop(hub);
        let apart = [
            ("000.00.00.G22", "vpcp"),
            ("000.00.00.H41", "nghean2"),
            ("000.00.00.H14", "caobang"),
        ];
        let hub = f.hub_with(store, &apart);
        hub.park_overdue().unwrap();
        assert_eq!(hub.queue_depth("child:nghean2"), 1);
        assert_eq!(hub.queue_depth("child:caobang"), 1);
        let (seq, _) = hub.queue_peek("child:nghean2", None, 1).unwrap().remove(0);
        hub.queue_ack("child:nghean2", seq).unwrap();
        let rec = hub.load_doc("000.00.00.G22", &id).unwrap();
        assert_eq!(rec.pending, 1, "caobang's half is still to be sent");
    }

    /// An agency the configuration binds is not removed at runtime: it would
    /// come back at the next start, after the parent and the children had
    /// dropped it. One registered at runtime is.
    #[test]
    fn only_runtime_registrations_are_removed_at_runtime() {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let remove = |organ: &str| {
            hub.change_directory(envelope::DirectoryFact {
                remove: true,
                organ: organ.parse().unwrap(),
                name: String::new(),
                parent: None,
                node: None,
            })
        };
        let e = remove("000.00.00.G22").unwrap_err().to_string();
        assert!(e.contains("bound by this node's configuration"), "{e}");
        hub.change_directory(envelope::DirectoryFact {
            remove: false,
            organ: "001.00.00.G22".parse().unwrap(),
            name: "Vụ".into(),
            parent: Some("000.00.00.G22".parse().unwrap()),
            node: Some("vpcp".parse().unwrap()),
        })
        .unwrap();
        remove("001.00.00.G22").unwrap();
    }

    /// A registration stored through a child is left out at start once the
    /// configuration no longer has that child: it would let the removed node
    /// connect again and send as the agencies registered through it.
    #[test]
    fn a_registration_through_a_removed_child_does_not_bring_it_back() {
        let f = Fixture::new();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let with_relay = [
            ("000.00.00.G22", "vpcp"),
            ("000.00.00.H41", "nghean"),
            ("000.00.00.H47", "quangnam"),
        ];
        let hub = f.hub_with(store.clone(), &with_relay);
        let district: OrganId = "001.00.10.H47".parse().unwrap();
        hub.change_directory(envelope::DirectoryFact {
            remove: false,
            organ: district.clone(),
            name: "Huyện Duy Xuyên".into(),
            parent: Some("000.00.00.H47".parse().unwrap()),
            node: Some("quangnam".parse().unwrap()),
        })
        .unwrap();
        let quangnam: NodeId = "quangnam".parse().unwrap();
        assert_eq!(hub.routing().child_of(&district), Some(&quangnam));
        hub.close().unwrap();
        drop(hub);

        let hub = f.hub_with(store.clone(), &with_relay);
        assert_eq!(hub.routing().child_of(&district), Some(&quangnam), "kept");
        hub.close().unwrap();
        drop(hub);

        let hub = f.hub_with(store, &with_relay[..2]);
        assert!(!hub.routing().is_child(&quangnam));
        assert_eq!(hub.routing().child_of(&district), None);
    }

    /// A child's report is its word: only nodes that form a tree below it are
    /// kept, so it cannot speak for the hub, its siblings or itself twice, nor
    /// put a name that is no node id into a metric label or the dashboard.
    #[test]
    fn a_childs_report_keeps_only_the_tree_below_it() {
        let f = Fixture::new();
        let hub = f.hub_with(
            Arc::new(MemoryStore::new()),
            &[
                ("000.00.00.G22", "vpcp"),
                ("000.00.00.H41", "nghean"),
                ("000.00.00.H47", "quangnam"),
            ],
        );
        let view = |node: &str, parent: &str| pb::NodeView {
            node: node.into(),
            parent: parent.into(),
            link: "down".into(),
            down_since_ms: 1,
            ..Default::default()
        };
        let quangnam: NodeId = "quangnam".parse().unwrap();
        let long = "v".repeat(1000);
        let report = vec![
            pb::NodeView {
                version: long.clone(),
                ..view("quangnam", "")
            },
            view("duyxuyen", "quangnam"),
            view("x\"} 1\ntruc_fake 1", "quangnam"),
            view("vpcp", "quangnam"),
            view("hub", "quangnam"),
            view("quangnam", "duyxuyen"),
            view("duyxuyen", "quangnam"),
            view("xaduy", "nowhere"),
            view("xaduy", "duyxuyen"),
        ];
        let kept = hub.trusted_report(&quangnam, report);
        assert_eq!(
            kept.iter()
                .map(|n| (n.node.as_str(), n.parent.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("quangnam", ""),
                ("duyxuyen", "quangnam"),
                ("xaduy", "duyxuyen")
            ]
        );
        assert_eq!(kept[0].version.len(), REPORT_TEXT);
        // A report that does not start with the child itself keeps nothing.
        assert!(
            hub.trusted_report(&quangnam, vec![view("vpcp", ""), view("a", "vpcp")])
                .is_empty()
        );
    }

    /// Statuses are found through their index; a store written before the
    /// index existed gets it when a node opens it.
    #[test]
    fn statuses_stored_before_their_index_existed_are_found_after_a_restart() {
        let f = Fixture::new();
        let store = Arc::new(MemoryStore::new());
        let env = pb::SignedEnvelope {
            signature: vec![1, 2, 3],
            ..Default::default()
        };
        let (doc, status) = (DocId::new_v7(), DocId::new_v7().to_string());
        let mut b = truc_store::Batch::new();
        b.put(
            Space::Docs,
            doc_key("000.00.00.H41", &status),
            record::encode(&DocRecord {
                envelope: env.encode_to_vec(),
                ..Default::default()
            }),
        );
        b.put(
            Space::Inbox,
            Key::new().str("000.00.00.G22").u64(1).build(),
            record::encode(&InboxEntry {
                organ: "000.00.00.G22".into(),
                from: "000.00.00.H41".into(),
                doc_id: status,
                kind: "status".into(),
                for_doc_id: doc.to_string(),
                ..Default::default()
            }),
        );
        store.apply(b).unwrap();
        let edge = f.edge(store.clone());
        assert_eq!(edge.statuses_about(&doc).unwrap(), vec![env]);
        assert!(edge.statuses_about(&DocId::new_v7()).unwrap().is_empty());
    }

    /// G22 to H41, one small attachment.
    fn letter_with_attachment() -> Submission {
        Submission {
            from: "000.00.00.G22".into(),
            to: vec!["000.00.00.H41".into()],
            subject: "Công văn".into(),
            attachments: vec![SubmittedAttachment {
                name: "cong-van.txt".into(),
                content_type: String::new(),
                body: Body::Inline(b"Kinh gui".to_vec()),
            }],
            ..Default::default()
        }
    }

    /// A doc_id sent again with the same document is a retry (a no-op); with
    /// another subject or other attachment bytes it is refused, naming what
    /// differs, and nothing of it is sent, instead of being dropped as a
    /// "duplicate" the application may not read.
    #[test]
    fn a_doc_id_reused_for_another_document_is_refused_not_dropped() {
        let f = Fixture::new();
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let id = DocId::new_v7().to_string();
        let first = Submission {
            doc_id: Some(id.clone()),
            ..letter_with_attachment()
        };
        let (_, a) = edge.submit(first.clone()).unwrap();
        assert!(matches!(a, Accepted::Stored(_)));
        let (_, a) = edge.submit(first.clone()).unwrap();
        assert!(matches!(a, Accepted::Duplicate(_)), "a retry");
        let other_subject = Submission {
            subject: "Công văn khác".into(),
            ..first.clone()
        };
        let e = tonic::Status::from(edge.submit(other_subject).unwrap_err());
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
        assert!(
            e.message().contains(&format!(
                "doc_id {id} of 000.00.00.G22 was used for another document (subject \"Công văn\")"
            )),
            "{e:?}"
        );
        let mut other_bytes = first.clone();
        other_bytes.attachments[0].body = Body::Inline(b"Kinh gui lai".to_vec());
        let e = tonic::Status::from(edge.submit(other_bytes).unwrap_err());
        assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
        assert!(
            e.message()
                .contains("attachments [\"cong-van.txt\"] with other bytes or names"),
            "{e:?}"
        );
        let sent = edge
            .list_sent(&"000.00.00.G22".parse().unwrap(), 10)
            .unwrap();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].subject, "Công văn");
    }

    /// Two agencies of one edge may use the same doc_id: each finds its own
    /// sent record by naming itself (GetStatus, and GetReceipts through it);
    /// not naming one is refused, naming both, instead of picking one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_senders_of_one_doc_id_each_find_their_own_record() {
        let f = Fixture::new();
        let mut routing = RoutingTable::new(true);
        for o in ["000.00.00.G22", "000.00.00.G21"] {
            routing.add_local(o.parse().unwrap());
        }
        let edge = f.state(
            "vpcp",
            routing,
            vec![f.signer("000.00.00.G22"), f.signer("000.00.00.G21")],
            None,
            Arc::new(MemoryStore::new()),
        );
        let id = DocId::new_v7();
        for from in ["000.00.00.G22", "000.00.00.G21"] {
            edge.submit(Submission {
                from: from.into(),
                to: vec!["000.00.00.H41".into()],
                subject: "Trùng số".into(),
                doc_id: Some(id.to_string()),
                ..Default::default()
            })
            .unwrap();
        }
        let e = edge.sent_by(&id, None).unwrap_err().to_string();
        assert!(
            e.contains("000.00.00.G22") && e.contains("000.00.00.G21"),
            "{e}"
        );
        let g21: OrganId = "000.00.00.G21".parse().unwrap();
        let mine = edge.sent_by(&id, Some(&g21)).unwrap();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].from, "000.00.00.G21");
        // A recall request (13) must say whose document it asks back.
        let recall = |organ: &str| Reply {
            doc_id: id.to_string(),
            from: String::new(),
            organ: organ.into(),
            code: "13".into(),
            note: String::new(),
            staff: String::new(),
            meta: BTreeMap::new(),
        };
        let e = edge.reply(recall("")).unwrap_err().to_string();
        assert!(e.contains("name the sender"), "{e}");
        edge.reply(recall("000.00.00.G21")).unwrap();
    }

    /// Each node counts its own public-key work, even beside other nodes in
    /// one process (`truc demo`): the edge's signature is not the hub's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_node_counts_its_own_signatures_beside_others_in_the_process() {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let count = |n: &NodeState, name: &str| {
            n.counters()
                .into_iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v)
        };
        edge.submit(letter_with_attachment()).unwrap();
        assert_eq!(count(&edge, "signatures_made"), Some(1), "the envelope");
        assert_eq!(count(&hub, "signatures_made"), Some(0));
        assert_eq!(count(&hub, "signatures_verified"), Some(0));
    }

    /// An upload an application gave up on, and a transfer whose document
    /// went away, are removed by the orphan sweep with their records; one
    /// still being received is not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_partial_files_are_swept_and_one_being_received_is_not() {
        let mut f = Fixture::new();
        f.storage.orphan_grace_ms = 0;
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let (gone, live) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let transfer = Digest::of(b"a document that went away").hex();
        for name in [
            format!("upload-{gone}"),
            format!("upload-{live}"),
            transfer.clone(),
        ] {
            let mut p = edge.blobs.partial(&name, 100, 0).unwrap();
            p.write(0, &[7; 40]).unwrap();
            p.sync().unwrap();
            edge.record_partial(&name, 40).unwrap();
        }
        let claim = edge.claim_upload(live).await;
        assert_eq!(edge.sweep_orphans().unwrap(), 2);
        for name in [format!("upload-{gone}"), transfer] {
            assert_eq!(edge.blobs.partial_len(&name), None, "{name}");
            assert_eq!(edge.partial_offset(&name).unwrap(), 0, "{name}");
        }
        let name = format!("upload-{live}");
        assert_eq!(edge.blobs.partial_len(&name), Some(40), "being received");
        assert_eq!(edge.partial_offset(&name).unwrap(), 40);
        drop(claim);

        // A finished upload whose file the sweep took is to be sent again,
        // not named by a document that would then find nothing.
        let data = vec![3u8; 100 << 10];
        let d = Digest::of(&data);
        edge.finish_upload(&gone, "upload-x", &d, data.len() as u64, Some("qlvb"))
            .unwrap();
        assert_eq!(edge.upload_done(&gone).unwrap(), None);
        edge.blobs.put(&data).unwrap();
        assert_eq!(
            edge.upload_done(&gone).unwrap(),
            Some((d, data.len() as u64))
        );
        assert!(edge.uploaded_by("qlvb", &d).unwrap());
        assert!(!edge.uploaded_by("other", &d).unwrap());
        // Swept again (nobody named it): its owner goes with it, and the
        // same bytes arriving later are not that application's to send.
        edge.sweep_orphans().unwrap();
        assert!(!edge.blobs.contains(&d));
        edge.blobs.put(&data).unwrap();
        assert!(!edge.uploaded_by("qlvb", &d).unwrap());
    }

    /// An upload finished before uploads named their application: the
    /// application's retry of it records it as its own, once; one finished
    /// since does not change hands that way.
    #[test]
    fn an_upload_from_before_owners_is_its_retrying_applications() {
        let f = Fixture::new();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let edge = f.edge(store.clone());
        let data = vec![4u8; 1000];
        let d = edge.blobs.put(&data).unwrap();
        let (old, new) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
        let mut legacy = d.0.to_vec();
        legacy.extend_from_slice(&(data.len() as u64).to_be_bytes());
        let mut b = Batch::new();
        b.put(Space::Meta, NodeState::upload_key(&old), legacy);
        store.apply(b).unwrap();
        // What a retry by `owner` does: owns it when it was finished
        // before owners were kept.
        let owned = |id: &uuid::Uuid, owner: &str| {
            let (digest, size, legacy) = edge.finished_upload(id).unwrap().unwrap();
            assert_eq!((digest, size), (d, 1000));
            legacy && edge.own_upload(owner, &digest).unwrap().is_some()
        };
        assert_eq!(edge.upload_done(&old).unwrap(), Some((d, 1000)));
        assert!(owned(&old, "qlvb"));
        assert!(edge.uploaded_by("qlvb", &d).unwrap());
        assert!(!owned(&old, "qlvb"), "once");
        edge.finish_upload(&new, "upload-y", &d, 1000, None)
            .unwrap();
        assert_eq!(edge.upload_done(&new).unwrap(), Some((d, 1000)));
        assert!(!owned(&new, "other"));
    }

    /// A submitted document's envelope is kept as a blob the record names (out
    /// of the key-value store), written with its attachments: it has a
    /// reference, so the orphan sweep leaves it; the queue still sends it; its
    /// retention removes the file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_envelope_kept_as_a_blob_is_referenced_sent_and_released_with_its_retention() {
        let mut f = Fixture::new();
        f.storage.retention_ms = 0;
        f.storage.envelope_retention_ms = Some(0);
        f.storage.orphan_grace_ms = 0;
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let (id, _) = edge.submit(letter_with_attachment()).unwrap();
        let (from, id) = ("000.00.00.G22", id.to_string());
        let rec = edge.load_doc(from, &id).unwrap();
        assert!(rec.envelope.is_empty(), "envelope bytes in the record");
        let blob = Digest::from_slice(&rec.envelope_sha256).expect("record names its envelope");
        assert!(edge.blobs.contains(&blob));
        assert_eq!(
            edge.sweep_orphans().unwrap(),
            0,
            "the envelope is not an orphan"
        );
        let (seq, entry) = edge.queue_peek("parent", None, 1).unwrap().pop().unwrap();
        let t = edge.load_transfer(seq, &entry, 1 << 20).unwrap();
        let sent = t.envelope.expect("transfer carries the envelope");
        assert_eq!(Digest::of(&sent.encode_to_vec()), blob);

        edge.queue_ack("parent", seq).unwrap();
        assert_eq!(edge.release_due().unwrap(), 2, "attachments and envelope");
        assert!(
            !edge.blobs.contains(&blob),
            "envelope file kept after its retention"
        );
        let e = edge
            .load_transfer(seq, &entry, 1 << 20)
            .unwrap_err()
            .to_string();
        assert!(e.contains("removed on"), "{e}");
    }

    /// A submission's own signature is not checked again, but its signer's
    /// certificate is: one this node's verifiers do not trust is refused at the
    /// source, and nothing is queued.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submission_signed_with_an_untrusted_certificate_is_refused_at_the_source() {
        let f = Fixture::new();
        let rogue = truc_pki::dev::DevCa::generate("not the signing CA").unwrap();
        let mut routing = RoutingTable::new(true);
        routing.add_local("000.00.00.G22".parse().unwrap());
        let signer = rogue
            .agency_signer(&"000.00.00.G22".parse().unwrap(), "G22")
            .unwrap();
        let edge = f.state(
            "vpcp",
            routing,
            vec![signer],
            None,
            Arc::new(MemoryStore::new()),
        );
        let e = edge
            .submit(Submission {
                from: "000.00.00.G22".into(),
                to: vec!["000.00.00.H41".into()],
                subject: "Công văn".into(),
                ..Default::default()
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("envelope") && e.contains("from 000.00.00.G22"),
            "{e}"
        );
        assert!(edge.queue_peek("parent", None, 10).unwrap().is_empty());
    }

    /// Invariant 1 with attachments: a submission stores its attachments and
    /// envelope without a sync of its own, so the flush the sender waits for must
    /// sync them before the record that names them is durable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_submission_is_durable_only_with_the_bytes_it_names() {
        let f = Fixture::new();
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let (_, accepted) = edge.submit(letter_with_attachment()).unwrap();
        edge.durable(accepted.ticket()).await.unwrap();
        assert_eq!(
            edge.blobs.unsynced_bytes(),
            0,
            "the record is durable, the attachment it names is not"
        );
    }

    /// On a store that may persist an applied record on its own (sled's log,
    /// PostgreSQL's asynchronous commit), the attachments are synced before the
    /// record that names them is applied, not by the flush.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_store_that_persists_on_its_own_attachments_are_synced_before_the_record() {
        let f = Fixture::new();
        let dir = tempfile::tempdir().unwrap();
        let edge = f.edge(Arc::new(SledStore::open(dir.path(), 1 << 20).unwrap()));
        edge.submit(letter_with_attachment()).unwrap();
        assert_eq!(edge.blobs.unsynced_bytes(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_attachment_is_deleted_only_after_the_last_document_naming_it_is_released() {
        let mut f = Fixture::new();
        f.storage.retention_ms = 0;
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let one = with_attachment(&f, &hub, b"bang tong hop");
        let two = with_attachment(&f, &hub, b"bang tong hop");
        let d = one.attachments[0];
        let (from, first) = (one.from.to_string(), one.doc_id.to_string());
        hub.accept(one, &child("vpcp"), None).unwrap();
        hub.accept(two, &child("vpcp"), None).unwrap();
        assert_eq!(
            hub.release_due().unwrap(),
            0,
            "nothing is released before it is passed on"
        );
        hub.queue_ack("child:nghean", 1).unwrap();
        assert_eq!(hub.release_due().unwrap(), 1);
        assert!(hub.blobs.contains(&d), "the second document still names it");
        // Asked for, the released one says why, not that a file is missing.
        let e = hub.attachment_of(&from, &first, 0).unwrap_err();
        assert!(
            matches!(&e, NodeError::Refused(r) if r.code == Code::FailedPrecondition
                && r.reason.contains("released after the retention period")),
            "{e}"
        );
        hub.queue_ack("child:nghean", 2).unwrap();
        assert_eq!(hub.release_due().unwrap(), 1);
        assert!(!hub.blobs.contains(&d), "nobody names it any more");
        let r = crate::audit::verify(hub.store().as_ref()).unwrap();
        assert_eq!(r.first_bad, None);
    }

    /// Records duty: past every retention, nothing of a document goes before
    /// it is exported — not its attachments, not its envelope, not its audit
    /// entries; once exported, all go at the next sweep, each removal audited,
    /// and the pruned chain still verifies from its anchor.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn nothing_of_an_unexported_document_is_deleted_and_every_deletion_is_audited() {
        let mut f = Fixture::new();
        f.storage.retention_ms = 0;
        f.storage.envelope_retention_ms = Some(0);
        f.storage.audit_retention_ms = Some(0);
        f.storage.keep_until_archived = true;
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let v = with_attachment(&f, &hub, b"quyet dinh");
        let (from, id) = (v.from.to_string(), v.doc_id.to_string());
        let blob = v.attachments[0];
        let resent = v.clone();
        hub.accept(v, &child("vpcp"), None).unwrap();
        hub.queue_ack("child:nghean", 1).unwrap();
        let events = |hub: &NodeState| -> Vec<String> {
            hub.audit_trail(&id)
                .unwrap()
                .into_iter()
                .map(|e| e.event)
                .collect()
        };

        assert_eq!(
            hub.release_due().unwrap(),
            2,
            "attachments and envelope due"
        );
        assert_eq!(
            events(&hub)
                .iter()
                .filter(|e| *e == "retention-deferred")
                .count(),
            2,
            "{:?}",
            events(&hub)
        );
        assert!(
            hub.blobs.contains(&blob),
            "attachment deleted before export"
        );
        hub.attachment_of(&from, &id, 0)
            .expect("envelope removed before export");
        assert_eq!(
            hub.prune_audit_before(i64::MAX, 1000).unwrap(),
            0,
            "audit entries about an unexported document removed"
        );
        assert_eq!(events(&hub)[0], "received");

        hub.mark_archived(&from, &id, b"package").unwrap();
        assert_eq!(hub.release_due().unwrap(), 2);
        assert!(!hub.blobs.contains(&blob), "attachment kept after export");
        let e = hub.attachment_of(&from, &id, 0).unwrap_err().to_string();
        assert!(e.contains("removed on") && e.contains("retention"), "{e}");
        let ev = events(&hub);
        assert!(
            ev.contains(&"released".to_owned()) && ev.contains(&"envelope-removed".to_owned()),
            "{ev:?}"
        );
        // The record stays: the same envelope again is still a duplicate.
        assert!(matches!(
            hub.accept(resent, &child("vpcp"), None).unwrap(),
            Accepted::Duplicate(_)
        ));

        let before = crate::audit::head(hub.store().as_ref()).unwrap().0;
        // The entries of the newest batch are one block, the head's: it stays.
        let (k, v) = hub.store().last(Space::Audit, &[]).unwrap().unwrap();
        let newest = crate::audit::decode_block(&k, &v).unwrap().len() as u64;
        let n = hub.prune_audit_before(i64::MAX, 1000).unwrap();
        assert_eq!(
            n as u64,
            before - newest,
            "all but the head's batch removed"
        );
        let r = crate::audit::verify(hub.store().as_ref()).unwrap();
        assert_eq!(r.first_bad, None);
        assert_eq!(r.pruned_through, before - newest);
        assert_eq!(
            r.entries,
            newest + 1,
            "the head's batch and the pruning entry"
        );
    }

    #[test]
    fn the_per_agency_quota_counts_attachment_bytes_held() {
        let mut f = Fixture::new();
        f.quotas.max_agency_bytes = 20;
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let items = vec![
            (with_attachment(&f, &hub, b"0123456789"), None),
            (with_attachment(&f, &hub, b"abcdefghij"), None),
            (with_attachment(&f, &hub, b"ABCDEFGHIJ"), None),
        ];
        let (verdicts, _) = hub.accept_batch(items, &child("vpcp")).unwrap();
        assert!(matches!(verdicts[1], Verdict::Stored));
        assert!(
            matches!(&verdicts[2], Verdict::Deferred(r) if r.contains("quotas.max_agency_bytes")),
            "{verdicts:?}"
        );
    }

    /// Two documents acknowledged together share an audit block; the first
    /// one's proof stops at its own last entry, not at the block's end (where
    /// the index points) nor at the log's head, and its checkpoint signs that
    /// entry.
    #[test]
    fn an_audit_proof_ends_at_the_documents_own_last_entry_inside_a_shared_block() {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let a = verified(&f, "000.00.00.G22", &["000.00.00.H41"]);
        let b = verified(&f, "000.00.00.G22", &["000.00.00.H41"]);
        let (a_id, b_id) = (a.doc_id.to_string(), b.doc_id.to_string());
        let a_sha256 = a.header_sha256;
        hub.accept_batch(vec![(a, None), (b, None)], &child("vpcp"))
            .unwrap();
        // Both passed on in one acknowledgement: one block, b's entry after a's
        // last one.
        hub.queue_ack("child:nghean", 2).unwrap();
        let (entries, checkpoint) = hub.audit_proof(&a_id, &a_sha256).unwrap();
        let about: Vec<&str> = entries.iter().map(|e| e.doc_id.as_str()).collect();
        assert_eq!(about.first(), Some(&a_id.as_str()), "{about:?}");
        assert_eq!(about.last(), Some(&a_id.as_str()), "{about:?}");
        let b_last = hub.audit_trail(&b_id).unwrap().last().unwrap().seq;
        assert!(entries.last().unwrap().seq < b_last, "{about:?}");
        let cp = pb::AuditCheckpoint::decode(checkpoint.checkpoint_bytes.as_slice()).unwrap();
        let last = entries.last().unwrap();
        assert_eq!(
            (cp.seq, cp.head_sha256.as_slice()),
            (last.seq, last.hash.as_slice())
        );
        // And its start and the document's bytes: no leading entry can be
        // dropped, no other version passed off under the same id.
        let first = &entries[0];
        assert_eq!(
            (cp.first_seq, cp.first_prev.as_slice()),
            (first.seq, first.prev.as_slice())
        );
        assert_eq!(cp.document_sha256, a_sha256.0.to_vec());
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
            hub.queue_depth("child:nghean"),
            0,
            "a refused message queued nothing"
        );
        assert!(matches!(
            hub.accept(v, &child("vpcp"), None).unwrap(),
            Accepted::Stored(_)
        ));
        assert_eq!(hub.queue_depth("child:nghean"), 1);
        // ... and the hub's signed ACCEPTED receipt waits for the sender.
        assert_eq!(hub.queue_depth("child:vpcp"), 1);
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
        assert_eq!(hub.queue_depth("child:nghean"), 1, "queued once");
    }

    #[test]
    fn the_same_doc_id_with_other_bytes_is_a_conflict_not_a_duplicate() {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let v = verified(&f, "000.00.00.G22", &["000.00.00.H41"]);
        hub.accept(v.clone(), &child("vpcp"), None).unwrap();
        let mut header = v.header.clone();
        header.subject = "something else".into();
        let other = f.seal_verified(&header);
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
        let hub = f.hub_with(
            store.clone(),
            &[
                ("000.00.00.G22", "vpcp"),
                ("000.00.00.H0", "a"),
                ("000.00.00.H1", "b"),
                ("000.00.00.H2", "c"),
            ],
        );
        let v = verified(
            &f,
            "000.00.00.G22",
            &["000.00.00.H0", "000.00.00.H1", "000.00.00.H2"],
        );
        hub.accept(v, &child("vpcp"), None).unwrap();
        // The document and the hub's own accepted receipt.
        assert_eq!(store.scan(Space::Docs, b"", None, 100).unwrap().len(), 2);
        for n in ["a", "b", "c"] {
            assert_eq!(hub.queue_depth(&format!("child:{n}")), 1);
        }
    }

    #[test]
    fn a_send_over_its_agencys_quota_is_refused_before_its_files_are_written() {
        let mut f = Fixture::new();
        f.quotas.max_agency_bytes = 4;
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let e = edge.submit(letter_with_attachment()).unwrap_err();
        let s = tonic::Status::from(e);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("quotas.max_agency_bytes"), "{s:?}");
        assert!(
            !edge.blobs.contains(&Digest::of(b"Kinh gui")),
            "the refused attachment was written, for the orphan sweep to find a day later"
        );
    }

    #[test]
    fn an_imported_package_is_kept_once_whatever_the_number_of_imports() {
        let f = Fixture::new();
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let from: OrganId = "000.00.00.G22".parse().unwrap();
        let doc_id = DocId::new_v7();
        let package = b"<edXML>...</edXML>".to_vec();
        edge.keep_original(&from, &doc_id, &package).unwrap();
        // A retried import (the document a duplicate by then) keeps nothing more,
        // and holds no second reference that would keep the file for ever.
        edge.keep_original(&from, &doc_id, &package).unwrap();
        assert_eq!(
            edge.original(from.as_str(), &doc_id).unwrap(),
            Some(package.clone())
        );
        let d = Digest(
            ring::digest::digest(&ring::digest::SHA256, &package)
                .as_ref()
                .try_into()
                .unwrap(),
        );
        assert_eq!(edge.refs(&Plan::default(), &d).unwrap(), 1);
    }

    #[test]
    fn a_full_recipient_queue_defers_and_everything_after_it_in_the_batch() {
        let mut f = Fixture::new();
        f.quotas.max_queued_per_recipient = 2;
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let items: Vec<_> = (0..4)
            .map(|_| (verified(&f, "000.00.00.G22", &["000.00.00.H41"]), None))
            .collect();
        let (verdicts, _) = hub.accept_batch(items, &child("vpcp")).unwrap();
        assert!(matches!(verdicts[0], Verdict::Stored));
        assert!(matches!(verdicts[1], Verdict::Stored));
        assert!(
            matches!(&verdicts[2], Verdict::Deferred(r) if r.contains("max_queued_per_recipient"))
        );
        assert!(
            matches!(verdicts[3], Verdict::Deferred(_)),
            "order per pair: nothing overtakes"
        );
        assert_eq!(hub.queue_depth("child:nghean"), 2);
        assert_eq!(hub.queue_ack("child:nghean", u64::MAX).unwrap(), 2);
        assert_eq!(hub.queue_depth("child:nghean"), 0, "acks free the quota");
    }

    /// A signing key of the fixture's CA: its certificate chain and PKCS#8 key.
    fn pdf_key(issued: truc_pki::dev::Issued) -> (Vec<Vec<u8>>, Vec<u8>) {
        use rustls::pki_types::{PrivatePkcs8KeyDer, pem::PemObject};
        let key = PrivatePkcs8KeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        (vec![issued.cert_der], key.secret_pkcs8_der().to_vec())
    }

    /// A read that fails long after the last failure (the link was down in
    /// between) starts the count again instead of giving up at once.
    #[test]
    fn a_read_failure_after_a_quiet_while_is_tried_again() {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        hub.set_read_retry_ms(100);
        assert!(hub.retry_read("child:nghean", 1));
        std::thread::sleep(std::time::Duration::from_millis(250));
        assert!(
            hub.retry_read("child:nghean", 1),
            "the 250 ms between were not spent failing"
        );
        hub.set_read_retry_ms(0);
        assert!(!hub.retry_read("child:nghean", 1), "given up on");
    }

    /// The failures of an entry that left the queue some other way are
    /// forgotten once quiet: reads stop taking the failures' lock.
    #[test]
    fn the_failures_of_an_entry_gone_from_the_queue_are_forgotten() {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        assert!(hub.retry_read("child:nghean", 1));
        hub.read_ok("child:nghean", 2);
        assert_eq!(hub.read_failing.load(Ordering::Relaxed), 1, "not quiet yet");
        hub.set_read_retry_ms(0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        hub.read_ok("child:nghean", 2);
        assert_eq!(hub.read_failing.load(Ordering::Relaxed), 0);
    }

    /// A decree signed by two agencies reaches the API with both signatures,
    /// each with its signer, time, coverage and verdict; the one by another
    /// agency than the sender is marked, and the verdict stays valid. A
    /// certificate that names no agency is compared with nothing.
    #[test]
    fn each_pdf_signature_is_shown_and_one_by_another_agency_is_marked() {
        let f = Fixture::new();
        // Whole seconds: signing times are.
        let now = now_ms() / 1000 * 1000;
        let anchors = truc_pdfsig::TrustAnchors::from_pem(f.ca.cert_pem().as_bytes()).unwrap();
        let justice = pdf_key(
            f.ca.agency_cert(&"000.00.00.H14".parse().unwrap(), "Bộ Tư pháp")
                .unwrap(),
        );
        let office = pdf_key(
            f.ca.agency_cert(&"000.00.00.G22".parse().unwrap(), "Văn phòng Chính phủ")
                .unwrap(),
        );
        let sign = |pdf: &[u8], (chain, key): &(Vec<Vec<u8>>, Vec<u8>), at: i64| {
            truc_pdfsig::sign_pdf(pdf, chain, key, at).unwrap()
        };
        let pdf = truc_pdfsig::simple_pdf(&["Nghi dinh so 30/2020/ND-CP"]);
        let pdf = sign(&pdf, &justice, now - 60_000);
        let pdf = sign(&pdf, &office, now - 30_000);

        let check = pdf_verdict(
            "nghi-dinh.pdf",
            truc_pdfsig::verify_pdf(&pdf, &anchors, now),
            "000.00.00.G22",
        );
        // The summary as before.
        assert_eq!(
            (
                check.verdict.as_str(),
                check.signer.as_str(),
                check.detail.as_str()
            ),
            ("valid", "Văn phòng Chính phủ", "")
        );
        let each: Vec<_> = check
            .signatures
            .iter()
            .map(|s| {
                (
                    s.verdict.as_str(),
                    s.signer.as_str(),
                    s.signing_time_ms,
                    s.covers_whole_file,
                    s.signer_organ.as_str(),
                    s.other_agency,
                )
            })
            .collect();
        assert_eq!(
            each,
            vec![
                (
                    "valid",
                    "Bộ Tư pháp",
                    now - 60_000,
                    false,
                    "000.00.00.H14",
                    true
                ),
                (
                    "valid",
                    "Văn phòng Chính phủ",
                    now - 30_000,
                    true,
                    "000.00.00.G22",
                    false
                ),
            ]
        );
        assert_eq!(
            pdf_summary(std::slice::from_ref(&check)),
            "nghi-dinh.pdf: valid (Văn phòng Chính phủ), 2 signatures, signed by another agency than the sender (000.00.00.H14)"
        );
        // Sent by the Ministry of Justice itself: nobody else signed.
        let by_justice = pdf_verdict(
            "nghi-dinh.pdf",
            truc_pdfsig::verify_pdf(&pdf, &anchors, now),
            "000.00.00.H14",
        );
        let marks: Vec<bool> = by_justice
            .signatures
            .iter()
            .map(|s| s.other_agency)
            .collect();
        assert_eq!(marks, vec![false, true]);

        // A certificate naming no agency (a node's here; a person's from a
        // national CA names none either): no organ, no mark.
        let node = pdf_key(f.ca.node_cert(&"vpcp".parse().unwrap(), &[]).unwrap());
        let pdf = sign(&truc_pdfsig::simple_pdf(&["x"]), &node, now - 1000);
        let check = pdf_verdict(
            "x.pdf",
            truc_pdfsig::verify_pdf(&pdf, &anchors, now),
            "000.00.00.G22",
        );
        let [only] = check.signatures.as_slice() else {
            panic!("{check:?}")
        };
        assert_eq!(only.verdict, "valid");
        assert_eq!((only.signer_organ.as_str(), only.other_agency), ("", false));
        assert_eq!(
            pdf_summary(std::slice::from_ref(&check)),
            format!("x.pdf: valid ({})", only.signer)
        );

        // An invalid signature names its signer, but no agency: its
        // certificate vouches for nothing.
        let mut changed = sign(&truc_pdfsig::simple_pdf(&["y"]), &justice, now - 1000);
        changed.extend_from_slice(b"\n% appended\n");
        let check = pdf_verdict(
            "y.pdf",
            truc_pdfsig::verify_pdf(&changed, &anchors, now),
            "000.00.00.G22",
        );
        let [only] = check.signatures.as_slice() else {
            panic!("{check:?}")
        };
        assert_eq!(
            (
                only.verdict.as_str(),
                only.signer.as_str(),
                only.signer_organ.as_str(),
                only.other_agency
            ),
            ("invalid", "Bộ Tư pháp", "", false)
        );
        assert!(only.detail.contains("changed after signing"), "{only:?}");
    }

    /// The verdicts recorded with a document keep every signature, and a
    /// record written before truc kept them still reads, with its summary.
    #[test]
    fn recorded_pdf_checks_keep_each_signature_and_older_records_still_read() {
        let f = Fixture::new();
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let check = pb::PdfSignatureCheck {
            attachment: "a.pdf".into(),
            verdict: "valid".into(),
            signer: "Văn phòng Chính phủ".into(),
            signatures: vec![
                pb::PdfSignature {
                    verdict: "valid".into(),
                    signer: "Bộ Tư pháp".into(),
                    signer_organ: "000.00.00.H14".into(),
                    other_agency: true,
                    ..Default::default()
                },
                pb::PdfSignature {
                    verdict: "valid".into(),
                    signer: "Văn phòng Chính phủ".into(),
                    covers_whole_file: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let put = |doc_id: &str, bytes: Vec<u8>| {
            let mut b = Batch::default();
            b.put(
                Space::Meta,
                NodeState::pdf_key("000.00.00.G22", doc_id),
                bytes,
            );
            edge.store.apply(b).unwrap();
        };
        put(
            "new",
            pb::PdfSignatureChecks {
                checks: vec![check.clone()],
            }
            .encode_to_vec(),
        );
        assert_eq!(
            edge.pdf_checks_recorded("000.00.00.G22", "new").unwrap(),
            Some(vec![check])
        );
        // As written before: fields 1 to 5 of each check, nothing else.
        let mut old = Vec::new();
        prost::encoding::message::encode(
            1,
            &pb::PdfSignatureCheck {
                attachment: "a.pdf".into(),
                verdict: "invalid".into(),
                detail: "digest mismatch".into(),
                ..Default::default()
            },
            &mut old,
        );
        put("old", old);
        let got = edge
            .pdf_checks_recorded("000.00.00.G22", "old")
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                got[0].verdict.as_str(),
                got[0].detail.as_str(),
                got[0].signatures.len()
            ),
            ("invalid", "digest mismatch", 0)
        );
    }

    #[test]
    fn every_change_is_in_the_audit_chain() {
        let f = Fixture::new();
        let store = Arc::new(MemoryStore::new());
        let hub = f.hub(store.clone());
        let v = verified(&f, "000.00.00.G22", &["000.00.00.H41"]);
        let id = v.doc_id.to_string();
        hub.accept(v, &child("vpcp"), None).unwrap();
        hub.queue_ack("child:nghean", u64::MAX).unwrap();
        let events: Vec<String> = hub
            .audit_trail(&id)
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(events, vec!["received", "queued", "forwarded"]);
        let report = crate::audit::verify(store.as_ref()).unwrap();
        assert_eq!(report.first_bad, None);
        assert!(report.entries >= 3);
    }

    /// Concurrent sends of local agencies share one batch, and each hears its
    /// own verdict: a document reused with other content is refused, the rest
    /// are stored, queued once each, with consecutive sequence numbers.
    #[test]
    fn concurrent_sends_are_written_in_one_batch_with_a_verdict_each() {
        let f = Fixture::new();
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let reused = DocId::new_v7().to_string();
        let batches0 = edge.commit().stats().batches.load(Ordering::SeqCst);
        // Hold the writer so that every send queues up behind it.
        let w = edge.lock();
        let sends: Vec<_> = (0..8)
            .map(|i| {
                let edge = edge.clone();
                let doc_id = (i >= 6).then(|| reused.clone());
                std::thread::spawn(move || {
                    edge.submit(Submission {
                        from: "000.00.00.G22".into(),
                        to: vec!["000.00.00.H41".into()],
                        subject: format!("Công văn {i}"),
                        doc_id,
                        ..Default::default()
                    })
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while edge.local.lock().unwrap().len() < 8 {
            assert!(
                std::time::Instant::now() < deadline,
                "the sends never queued up for the writer"
            );
            std::thread::yield_now();
        }
        drop(w);
        let results: Vec<_> = sends.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(
            edge.commit().stats().batches.load(Ordering::SeqCst) - batches0,
            1,
            "eight sends, one batch"
        );
        let stored = results
            .iter()
            .filter(|r| matches!(r, Ok((_, Accepted::Stored(_)))))
            .count();
        let conflicts: Vec<_> = results
            .iter()
            .filter_map(|r| match r {
                Err(NodeError::Refused(r)) => Some(r.code),
                _ => None,
            })
            .collect();
        assert_eq!((stored, conflicts), (7, vec![Code::AlreadyExists]));
        let queued = edge.queue_peek("parent", None, 100).unwrap();
        let seqs: Vec<u64> = queued.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
        // The queue's sequence was written once, at its last number: a restart
        // goes on after it.
        let stored_seq = edge
            .store
            .get(Space::Meta, &seq_key("parent"))
            .unwrap()
            .and_then(|v| trailing_u64(&v));
        assert_eq!(stored_seq, Some(7));
    }

    /// A store write that hangs (a disk, a PostgreSQL lock) makes the node
    /// unwritable, with the reason, for as long as it hangs (health and the
    /// `store_writable` metric follow `writable`), the alerts say it, and
    /// reading them does not wait for the write.
    #[test]
    fn a_hanging_store_write_makes_the_node_unwritable_until_it_answers() {
        let f = Fixture::new();
        let (store, plan) = truc_store::FaultyStore::new(MemoryStore::new());
        let edge = f.edge(Arc::new(store));
        assert_eq!(edge.unwritable(), None);
        let next = plan.applies.load(Ordering::SeqCst) + 1;
        plan.stall_apply_at.store(next, Ordering::SeqCst);
        // Until released below, however slow the machine.
        plan.stall_ms.store(600_000, Ordering::SeqCst);
        // Released however the test ends, so that the writer never waits long.
        struct Release(Arc<truc_store::FaultPlan>);
        impl Drop for Release {
            fn drop(&mut self) {
                self.0.release.store(true, Ordering::SeqCst);
            }
        }
        let release = Release(plan.clone());
        let e = edge.clone();
        let writer = std::thread::spawn(move || {
            e.submit(Submission {
                from: "000.00.00.G22".into(),
                to: vec!["000.00.00.H41".into()],
                subject: "x".into(),
                ..Default::default()
            })
        });
        while !plan.stalling.load(Ordering::SeqCst) {
            assert!(!writer.is_finished(), "the write never hung");
            std::thread::yield_now();
        }
        let why = edge
            .unwritable()
            .expect("unwritable while it hangs")
            .to_string();
        assert!(why.contains(&format!("write {next} hangs")), "{why}");
        assert!(!edge.writable());
        // What operators read does not wait for the write: the alerts, a
        // queue's depth.
        let read = edge.read_within(READ_WAIT, NodeState::queue_snapshot);
        let alerts = edge.alerts(&Default::default(), &read);
        assert!(alerts.iter().any(|a| a.detail == why), "{alerts:?}");
        assert_eq!(edge.queue_depth("parent"), 0);
        assert!(plan.stalling.load(Ordering::SeqCst), "read while it hangs");
        drop(release);
        writer.join().unwrap().unwrap();
        assert_eq!(edge.unwritable(), None, "answers again");
    }

    /// A read that hangs before the store is known to hang (its first 5 s)
    /// does not hold what operators see: the alerts and the scrape answer
    /// after their wait, without the queues and with an alert that says so;
    /// only a few such reads are left waiting; the queues are back once the
    /// store answers.
    #[test]
    fn a_read_that_hangs_does_not_hold_what_operators_see() {
        let f = Fixture::new();
        let (store, plan) = truc_store::FaultyStore::new(MemoryStore::new());
        let hub = f.hub(Arc::new(store));
        let v = f.verified("000.00.00.G22", &["000.00.00.H41"]);
        hub.accept(v, &child("vpcp"), None).unwrap();
        let scrape = || {
            crate::telemetry::render(&crate::telemetry::Telemetry::registry(
                &hub,
                crate::config::AlertSection::default(),
            ))
        };
        assert!(scrape().contains("truc_queue_depth{"), "{}", scrape());
        // A read that fails outright answers so, and is not left counted.
        let e = hub
            .read_within(std::time::Duration::from_secs(600), |_| -> Result<(), _> {
                panic!("a read that fails")
            })
            .unwrap_err();
        assert!(e.to_string().contains("read of the store failed"), "{e}");
        assert_eq!(hub.abandoned_reads.load(Ordering::SeqCst), 0);
        plan.hold_reads.store(true, Ordering::SeqCst);
        struct Release(Arc<truc_store::FaultPlan>);
        impl Drop for Release {
            fn drop(&mut self) {
                self.0.hold_reads.store(false, Ordering::SeqCst);
            }
        }
        let release = Release(plan.clone());
        assert_eq!(hub.unwritable(), None, "not known to hang yet");
        let wait = std::time::Duration::from_millis(50);
        let read = hub.read_within(wait, NodeState::queue_snapshot);
        let e = read.as_ref().unwrap_err().to_string();
        assert!(e.contains("has not answered for 50 ms"), "{e}");
        let alerts = hub.alerts(&Default::default(), &read);
        assert!(
            alerts
                .iter()
                .any(|a| a.kind == "store" && a.detail.contains("the queues cannot be read")),
            "{alerts:?}"
        );
        let scraped = scrape();
        assert!(
            scraped.contains("alert_active{alert=\"store\""),
            "{scraped}"
        );
        assert!(!scraped.contains("truc_queue_depth{"), "{scraped}");
        // The read and the scrape above were given up on; a few more are, then
        // callers are answered at once.
        assert_eq!(hub.abandoned_reads.load(Ordering::SeqCst), 2);
        let mut last = String::new();
        for _ in 0..ABANDONED_READS_MAX {
            last = (hub
                .read_within(wait, NodeState::queue_snapshot)
                .unwrap_err())
            .to_string();
        }
        assert!(last.contains("4 earlier reads are still waiting"), "{last}");
        assert_eq!(
            hub.abandoned_reads.load(Ordering::SeqCst),
            ABANDONED_READS_MAX
        );
        assert_eq!(
            plan.reads_held_out.load(Ordering::SeqCst),
            0,
            "nothing waited for a held read"
        );
        drop(release);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while hub.abandoned_reads.load(Ordering::SeqCst) > 0 {
            assert!(std::time::Instant::now() < deadline, "the reads end");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let snap = hub
            .read_within(
                std::time::Duration::from_secs(600),
                NodeState::queue_snapshot,
            )
            .unwrap();
        assert!(!snap.recipients.is_empty(), "the queue is back");
    }

    /// A revocation list due within a day is a warning of its own kind
    /// (`crl_due`, a page may wait); one past its next update is `crl`,
    /// which refuses what it covers.
    #[test]
    fn a_list_due_soon_and_a_stale_one_are_alerts_of_two_kinds() {
        let f = Fixture::new();
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let kinds = |next: i64| {
            edge.telemetry
                .set_crls("transport", vec![("ca.crl".into(), next)]);
            edge.alerts(&Default::default(), &Ok(Default::default()))
                .into_iter()
                .filter(|a| a.subject == "transport:ca.crl")
                .map(|a| a.kind)
                .collect::<Vec<_>>()
        };
        let now = now_ms() / 1000;
        assert_eq!(kinds(now + 3600), ["crl_due"]);
        assert_eq!(kinds(now - 60), ["crl"]);
        assert!(kinds(now + 7 * 86_400).is_empty());
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

    #[test]
    fn an_ack_or_nack_for_an_agency_that_did_not_receive_the_document_is_not_found() {
        let f = Fixture::new();
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let v = verified(&f, "000.00.00.H41", &["000.00.00.G22"]);
        let doc_id = v.doc_id;
        edge.accept_batch(vec![(v, None)], &Origin::Parent("hub".parse().unwrap()))
            .unwrap();
        let h41: OrganId = "000.00.00.H41".parse().unwrap();
        let not_found =
            |e: NodeError| matches!(e, NodeError::Refused(r) if r.code == Code::NotFound);
        assert!(not_found(edge.ack(&doc_id, None, Some(&h41)).unwrap_err()));
        assert!(not_found(
            edge.nack(&doc_id, None, Some(&h41), "x").unwrap_err()
        ));
        let g22: OrganId = "000.00.00.G22".parse().unwrap();
        assert_eq!(edge.ack(&doc_id, None, Some(&g22)).unwrap().0, [g22]);
    }

    /// Two senders used one doc_id for documents to the same agency: an ack,
    /// a nack or a status that does not name the sender is refused, naming
    /// both, and changes nothing; naming one answers for that one only.
    #[test]
    fn an_answer_to_a_doc_id_two_senders_used_must_name_the_sender() {
        let f = Fixture::new();
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let doc_id = DocId::new_v7();
        for from in ["000.00.00.H41", "000.00.00.H42"] {
            let v = f.verified_as(&doc_id, from, &["000.00.00.G22"]);
            let (verdicts, _) = edge
                .accept_batch(vec![(v, None)], &Origin::Parent("hub".parse().unwrap()))
                .unwrap();
            assert!(matches!(verdicts[..], [Verdict::Stored]), "{verdicts:?}");
        }
        let g22: OrganId = "000.00.00.G22".parse().unwrap();
        let h42: OrganId = "000.00.00.H42".parse().unwrap();
        let ambiguous = |e: NodeError| {
            matches!(&e, NodeError::Refused(r) if r.code == Code::FailedPrecondition
                && r.reason.contains("000.00.00.H41, 000.00.00.H42"))
        };
        assert!(ambiguous(edge.ack(&doc_id, None, Some(&g22)).unwrap_err()));
        assert!(ambiguous(edge.ack(&doc_id, None, None).unwrap_err()));
        assert!(ambiguous(
            edge.nack(&doc_id, None, Some(&g22), "x").unwrap_err()
        ));
        assert!(ambiguous(
            edge.reply(Reply {
                doc_id: doc_id.to_string(),
                code: "03".into(),
                ..Default::default()
            })
            .unwrap_err()
        ));
        let unacked = |from: &str| {
            edge.inbox_entries(&doc_id, Some(&from.parse().unwrap()))
                .unwrap()
                .iter()
                .all(|(_, e)| !e.acked && e.nacked.is_empty())
        };
        assert!(unacked("000.00.00.H41") && unacked("000.00.00.H42"));
        assert_eq!(edge.ack(&doc_id, Some(&h42), None).unwrap().0, [g22]);
        assert!(unacked("000.00.00.H41"), "the other sender's stays unacked");
        assert!(!unacked("000.00.00.H42"));
    }

    /// What an application may read and answer is read from the inbox: only
    /// its own agencies' documents, the sender named where two used one
    /// doc_id, and still once the envelope is no longer kept.
    #[test]
    fn received_by_answers_for_the_applications_agencies_from_the_inbox() {
        let mut f = Fixture::new();
        f.storage.retention_ms = 0;
        f.storage.envelope_retention_ms = Some(0);
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let doc_id = DocId::new_v7();
        let g22: OrganId = "000.00.00.G22".parse().unwrap();
        let (h41, h42): (OrganId, OrganId) = (
            "000.00.00.H41".parse().unwrap(),
            "000.00.00.H42".parse().unwrap(),
        );
        let arrive = |from: &OrganId| {
            let v = f.verified_as(&doc_id, from.as_str(), &[g22.as_str()]);
            edge.accept_batch(vec![(v, None)], &Origin::Parent("hub".parse().unwrap()))
                .unwrap();
        };
        arrive(&h41);
        let mine = [g22.clone()];
        assert_eq!(
            edge.received_by(&doc_id, None, &mine).unwrap(),
            (vec![g22.clone()], Some(h41.clone()))
        );
        // Another application's agencies: nothing (not even that it exists).
        assert_eq!(
            edge.received_by(&doc_id, None, std::slice::from_ref(&h42))
                .unwrap(),
            (vec![], None)
        );
        // Acked, and its envelope removed at the end of its retention.
        edge.ack(&doc_id, None, None).unwrap();
        assert!(edge.release_due().unwrap() >= 1);
        assert!(edge.received_envelope(&doc_id, None).is_err(), "removed");
        assert_eq!(
            edge.received_by(&doc_id, Some(&h41), &mine).unwrap().1,
            Some(h41.clone())
        );
        // A second sender's document under the same doc_id: name the sender.
        arrive(&h42);
        let e = edge.received_by(&doc_id, None, &mine).unwrap_err();
        assert!(
            matches!(&e, NodeError::Refused(r) if r.code == Code::FailedPrecondition),
            "{e}"
        );
        assert_eq!(
            edge.received_by(&doc_id, Some(&h42), &mine).unwrap(),
            (vec![g22], Some(h42))
        );
    }

    /// A document a hub forwarded for some recipients comes again for others
    /// (their agencies moved to a child it already serves, and the sender
    /// requeued it): it is forwarded for those, with an accepted receipt,
    /// not acknowledged as a duplicate and dropped. A plain resend stays a
    /// duplicate.
    #[test]
    fn a_document_sent_again_for_other_recipients_is_forwarded_for_them() {
        let f = Fixture::new();
        let hub = f.hub_with(
            Arc::new(MemoryStore::new()),
            &[
                ("000.00.00.G22", "vpcp"),
                ("000.00.00.H41", "nghean"),
                ("000.00.00.H14", "caobang"),
            ],
        );
        let v = f.verified("000.00.00.G22", &["000.00.00.H41", "000.00.00.H14"]);
        let send = |to: &[&str]| {
            let to: Vec<OrganId> = to.iter().map(|o| o.parse().unwrap()).collect();
            let (verdicts, _) = hub
                .accept_batch(vec![(v.clone(), Some(to))], &child("vpcp"))
                .unwrap();
            verdicts.into_iter().next().unwrap()
        };
        assert!(matches!(send(&["000.00.00.H41"]), Verdict::Stored));
        let receipts = hub.queue_depth("child:vpcp");
        assert_eq!(hub.queue_depth("child:nghean"), 1);
        assert!(matches!(send(&["000.00.00.H41"]), Verdict::Duplicate));
        assert_eq!(hub.queue_depth("child:caobang"), 0);

        assert!(matches!(send(&["000.00.00.H14"]), Verdict::Stored));
        assert_eq!(hub.queue_depth("child:caobang"), 1, "forwarded for H14");
        assert_eq!(hub.queue_depth("child:nghean"), 1, "not again for H41");
        assert_eq!(
            hub.queue_depth("child:vpcp"),
            receipts + 1,
            "an accepted receipt for H14"
        );
        assert!(matches!(
            send(&["000.00.00.H41", "000.00.00.H14"]),
            Verdict::Duplicate
        ));
        assert_eq!(hub.queue_depth("child:caobang"), 1);
    }

    /// A document taken again for more recipients counts their deliveries as
    /// its first arrival did, whatever the configuration says now: here no
    /// envelope retention then (nothing counted), one since. Its envelope is
    /// not released while the new delivery still waits.
    #[test]
    fn a_document_taken_again_counts_deliveries_as_on_its_first_arrival() {
        let mut f = Fixture::new();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let children = [
            ("000.00.00.G22", "vpcp"),
            ("000.00.00.H41", "nghean"),
            ("000.00.00.H14", "caobang"),
        ];
        let v = f.verified("000.00.00.G22", &["000.00.00.H41", "000.00.00.H14"]);
        let send = |hub: &NodeState, to: &str| {
            hub.accept_batch(
                vec![(v.clone(), Some(vec![to.parse().unwrap()]))],
                &child("vpcp"),
            )
            .unwrap()
            .0
            .remove(0)
        };
        let hub = f.hub_with(store.clone(), &children);
        assert!(matches!(send(&hub, "000.00.00.H41"), Verdict::Stored));
        hub.close().unwrap();
        drop(hub);
        f.storage.envelope_retention_ms = Some(0);
        let hub = f.hub_with(store, &children);
        assert!(matches!(send(&hub, "000.00.00.H14"), Verdict::Stored));
        let (seq, _) = hub.queue_peek("child:nghean", None, 1).unwrap().remove(0);
        hub.queue_ack("child:nghean", seq).unwrap();
        hub.release_due().unwrap();
        let (seq, entry) = hub.queue_peek("child:caobang", None, 1).unwrap().remove(0);
        assert!(
            hub.load_transfer(seq, &entry, 1 << 20).is_ok(),
            "the envelope is kept for H14"
        );
    }

    /// At an edge, a document delivered to one of its agencies comes again
    /// for another it now serves: delivered to that one too. Once the stored
    /// bytes are released it cannot be, and the refusal says why.
    #[test]
    fn a_document_sent_again_for_another_local_agency_is_delivered_to_it() {
        let mut f = Fixture::new();
        f.storage.retention_ms = 0;
        f.storage.envelope_retention_ms = Some(0);
        let mut routing = RoutingTable::new(true);
        for o in ["000.00.00.G22", "000.00.00.G23", "000.00.00.G24"] {
            routing.add_local(o.parse().unwrap());
        }
        let edge = f.state(
            "vpcp",
            routing,
            ["000.00.00.G22", "000.00.00.G23", "000.00.00.G24"]
                .map(|o| f.signer(o))
                .into(),
            None,
            Arc::new(MemoryStore::new()),
        );
        let v = f.verified(
            "000.00.00.H41",
            &["000.00.00.G22", "000.00.00.G23", "000.00.00.G24"],
        );
        let parent = Origin::Parent("hub".parse().unwrap());
        let send = |to: &str| {
            let (verdicts, _) = edge
                .accept_batch(vec![(v.clone(), Some(vec![to.parse().unwrap()]))], &parent)
                .unwrap();
            verdicts.into_iter().next().unwrap()
        };
        let delivered = |organ: &str| {
            let n = edge
                .inbox_entries(&v.doc_id, None)
                .unwrap()
                .iter()
                .filter(|(_, e)| e.organ == organ)
                .count();
            assert!(n <= 1, "{n} inbox entries for {organ}");
            n == 1
        };
        assert!(matches!(send("000.00.00.G22"), Verdict::Stored));
        // Acknowledged by G22: its envelope's release is due (retention 0)...
        let g22: OrganId = "000.00.00.G22".parse().unwrap();
        edge.ack(&v.doc_id, None, Some(&g22)).unwrap();
        assert!(matches!(send("000.00.00.G23"), Verdict::Stored));
        assert!(delivered("000.00.00.G23"), "delivered to G23 too");
        assert!(matches!(send("000.00.00.G23"), Verdict::Duplicate));
        assert!(delivered("000.00.00.G23"), "once");
        let counted = |organ: &str| {
            edge.daily_stats(1)
                .unwrap()
                .iter()
                .filter(|d| d.organ == organ && d.direction == "delivered")
                .map(|d| d.documents)
                .sum::<u64>()
        };
        assert_eq!(
            (counted("000.00.00.G22"), counted("000.00.00.G23")),
            (1, 1),
            "each counted once in the day's statistics"
        );
        // ... but G23 has not taken it yet: kept.
        edge.release_due().unwrap();
        assert!(
            edge.received_envelope(&v.doc_id, None).is_ok(),
            "kept for G23"
        );

        // Both acknowledged: its envelope goes at the end of its retention.
        edge.ack(&v.doc_id, None, None).unwrap();
        assert!(edge.release_due().unwrap() >= 1);
        match send("000.00.00.G24") {
            Verdict::Refused(r) => {
                assert_eq!(r.code, Code::FailedPrecondition);
                assert!(r.reason.contains("released"), "{}", r.reason);
            }
            other => panic!("{other:?}"),
        }
        assert!(!delivered("000.00.00.G24"));
    }

    #[tokio::test]
    async fn an_arrival_is_announced_to_applications_only_once_durable() {
        // Durable: the application hears of it.
        let f = Fixture::new();
        let edge = f.edge(Arc::new(MemoryStore::new()));
        let mut live = edge.subscribe_agency();
        let v = verified(&f, "000.00.00.H41", &["000.00.00.G22"]);
        let parent = Origin::Parent("hub".parse().unwrap());
        let (_, ticket) = edge.accept_batch(vec![(v, None)], &parent).unwrap();
        edge.durable(ticket).await.unwrap();
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), live.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(e.kind, "arrived");
        let g22: OrganId = "000.00.00.G22".parse().unwrap();
        assert_eq!(edge.agency_events_after(&g22, 0, 10).unwrap().len(), 1);

        // Never durable (the flush fails): never told, live or from the store, so
        // its event id cannot be promised and then reused after a restart.
        let (store, plan) = truc_store::FaultyStore::new(MemoryStore::new());
        let edge = f.edge(Arc::new(store));
        let mut live = edge.subscribe_agency();
        plan.fail_flush.store(true, Ordering::SeqCst);
        let v = verified(&f, "000.00.00.H41", &["000.00.00.G22"]);
        let (_, ticket) = edge.accept_batch(vec![(v, None)], &parent).unwrap();
        assert!(edge.durable(ticket).await.is_err());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(live.try_recv().is_err(), "announced before it was durable");
        assert!(edge.agency_events_after(&g22, 0, 10).unwrap().is_empty());
    }
}
