//! The link: one long-lived bidirectional gRPC stream between a child and its
//! parent, opened by the child (DESIGN §5).
//!
//! Both directions run the same session. The sender pushes its durable queue for
//! the peer in sequence order, never more than the peer's window unacknowledged.
//! The receiver verifies transfers in parallel, accepts them in order, and sends a
//! cumulative `Ack` only after the group commit covering them has fsynced; refused
//! transfers get a `Reject` before the `Ack` that passes them. On reconnect the
//! sender starts again from the head of its queue; the receiver's permanent dedup
//! makes the resent transfers harmless.

use std::{
    collections::{HashMap, VecDeque},
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{FutureExt, Stream, StreamExt};
use rustls::pki_types::UnixTime;
use tokio::{
    sync::{mpsc, watch},
    task::JoinSet,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;
use truc_core::{DocId, NodeId, OrganId};
use truc_proto::v1::{self as pb, link_frame::Frame};
use truc_store::{Digest, Ticket};

use crate::{
    envelope::{self, Verified},
    error::{NodeError, Refusal},
    state::{NodeState, Origin, Verdict},
};

/// The link protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Timing and flow control of a link.
#[derive(Debug, Clone)]
pub struct LinkParams {
    /// What this node lets the peer have in flight.
    pub window: u32,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub max_message_bytes: usize,
    /// Bytes this node keeps in flight on one link.
    pub max_inflight_bytes: usize,
    /// Attachments up to this total travel inline; larger ones are streamed.
    pub inline_attachment_bytes: u64,
    pub chunk_bytes: usize,
    pub stream_window_bytes: u32,
}

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("peer closed the link")]
    Closed,
    #[error("link silent for {0:?}")]
    Silent(Duration),
    #[error("link rpc: {0}")]
    Rpc(#[from] Status),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("link stopped")]
    Stopped,
    #[error("{0}; the session starts again")]
    Resync(String),
}

fn frame(f: Frame) -> pb::LinkFrame {
    pb::LinkFrame { frame: Some(f) }
}

enum Control {
    Ack {
        seq: u64,
        window: u32,
    },
    Reject {
        seq: u64,
        code: i32,
        reason: String,
    },
    Defer {
        seq: u64,
        reason: String,
        retry_after_ms: u32,
    },
}

enum Prepared {
    Ok(Box<Verified>, Vec<OrganId>),
    /// A resend of what this node took before, that fails its checks now
    /// ([`NodeState::taken_before`]): acknowledged once the write that took
    /// it is durable, nothing stored; its kind, counted once answered.
    Duplicate(Ticket, &'static str),
    Refused(Refusal),
    /// Not now (disk full, a stale revocation list here); the sender keeps it
    /// and retries.
    Deferred(String),
}

/// A failed check: refused for good, or deferred when waiting may settle it
/// (a reason of this node's own, [`Refusal::not_now`]).
impl From<Refusal> for Prepared {
    fn from(r: Refusal) -> Self {
        if r.retry {
            Self::Deferred(r.reason)
        } else {
            Self::Refused(r)
        }
    }
}

/// A transfer that passed every check: the message, the recipients this hop serves,
/// and the attachment bytes in manifest order.
type Checked = (Verified, Vec<OrganId>, Vec<Vec<u8>>);

/// Checks one received transfer: signature, recipients, attachment bytes against
/// the signed manifest. Returns what to store, or why it is refused (a
/// duplicate, when it is a resend of what this node took before).
fn check(state: &NodeState, t: pb::Transfer, origin: &Origin) -> Result<Checked, Prepared> {
    let env = t
        .envelope
        .ok_or_else(|| Refusal::invalid("transfer without envelope"))?;
    // Kept for a failed check (a few KiB; the signature work is far more).
    let header = env.header_bytes.clone();
    let v = envelope::verify(env, &state.verifiers, &state.limits, UnixTime::now()).map_err(|r| {
        match state.taken_before(&header, &t.recipients, origin) {
            Ok(Some((ticket, kind))) => {
                tracing::info!(kind, reason = %r.reason, "a resend of a message taken before, whose checks fail now: acknowledged as a duplicate");
                Prepared::Duplicate(ticket, kind)
            }
            Ok(None) => r.into(),
            // A store that cannot say whether it was taken: not refused for
            // good on a guess; the sender keeps it and retries.
            Err(e) => Prepared::Deferred(format!(
                "{}; whether it was taken here before cannot be read now: {e}",
                r.reason
            )),
        }
    })?;
    let recipients = t
        .recipients
        .iter()
        .map(|r| {
            r.parse::<OrganId>()
                .map_err(|e| Refusal::invalid(format!("transfer recipients: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if recipients.is_empty() && v.kind != truc_core::Kind::Directory {
        return Err(Prepared::from(Refusal::invalid(
            "transfer names no recipients for this hop",
        )));
    }
    if t.attachments.is_empty() {
        // Streamed: the bytes follow on request and are checked as they complete.
        return Ok((v, recipients, Vec::new()));
    }
    if t.attachments.len() != v.attachments.len() {
        return Err(Prepared::from(Refusal::invalid(format!(
            "envelope {} names {} attachments but {} were sent",
            v.doc_id,
            v.attachments.len(),
            t.attachments.len()
        ))));
    }
    let mut data = Vec::with_capacity(t.attachments.len());
    for ((a, digest), meta) in t
        .attachments
        .into_iter()
        .zip(&v.attachments)
        .zip(&v.header.attachments)
    {
        if a.data.len() as u64 != meta.size || Digest::of(&a.data) != *digest {
            return Err(Prepared::from(Refusal::invalid(format!(
                "attachment {:?} of {}: bytes do not match the signed sha-256",
                meta.name, v.doc_id
            ))));
        }
        data.push(a.data);
    }
    Ok((v, recipients, data))
}

/// Checks a batch of received transfers and stores the attachments of the valid
/// ones with one group of filesystem syncs (blocking IO). An IO error fails the
/// batch: nothing of it is acknowledged and the peer sends it again.
fn prepare(
    state: &NodeState,
    batch: Vec<pb::Transfer>,
    origin: &Origin,
) -> Result<Vec<(u64, Prepared)>, NodeError> {
    let mut out = Vec::with_capacity(batch.len());
    let mut blobs: Vec<(Digest, Vec<u8>)> = Vec::new();
    for t in batch {
        let seq = t.seq;
        match check(state, t, origin) {
            Ok((mut v, recipients, data)) => {
                // A document's envelope goes with its attachments (the same
                // syncs): its record, rewritten as deliveries progress, then
                // names the bytes instead of holding them. Without attachments
                // (receipts, statuses) the record is written once: inline, no
                // file sync of its own.
                if !v.attachments.is_empty() {
                    blobs.push(v.keep_envelope_as_blob());
                }
                blobs.extend(v.attachments.iter().copied().zip(data));
                out.push((seq, Prepared::Ok(Box::new(v), recipients)));
            }
            Err(p) => out.push((seq, p)),
        }
    }
    let refs: Vec<(Digest, &[u8])> = blobs.iter().map(|(d, b)| (*d, b.as_slice())).collect();
    // Durable no later than the records that name them.
    state.put_named_blobs(&refs)?;
    Ok(out)
}

/// The sending half of a link: control frames and transfers on one channel (up to
/// a window of them), attachment chunks on a short one of their own, so that a
/// stream of chunks never queues more than a couple in memory.
#[derive(Clone)]
pub struct Outbox {
    pub frames: mpsc::Sender<pb::LinkFrame>,
    pub chunks: mpsc::Sender<pb::LinkFrame>,
}

/// A new outbox and the stream of frames it feeds, for the gRPC call.
pub fn outbox(
    window: u32,
) -> (
    Outbox,
    impl futures::Stream<Item = pb::LinkFrame> + Send + 'static,
) {
    let (f_tx, f_rx) = mpsc::channel(window as usize + 16);
    let (c_tx, c_rx) = mpsc::channel(2);
    let stream = futures::stream::select(ReceiverStream::new(f_rx), ReceiverStream::new(c_rx));
    (
        Outbox {
            frames: f_tx,
            chunks: c_tx,
        },
        stream,
    )
}

/// Whether a transfer's attachments follow as streams.
fn is_streamed(t: &pb::Transfer) -> bool {
    t.attachments.is_empty()
        && t.envelope.as_ref().is_some_and(|e| {
            <pb::Header as prost::Message>::decode(e.header_bytes.as_slice())
                .is_ok_and(|h| !h.attachments.is_empty())
        })
}

/// Checks a transfer whose attachments are streamed, then fetches each one that is
/// not on this node yet (resuming partial copies) before it counts as received.
async fn receive_streamed(
    state: Arc<NodeState>,
    out: mpsc::Sender<pb::LinkFrame>,
    sinks: crate::stream::Sinks,
    t: pb::Transfer,
    origin: Origin,
) -> Result<Vec<(u64, Prepared)>, NodeError> {
    let seq = t.seq;
    let st = state.clone();
    let checked = tokio::task::spawn_blocking(move || check(&st, t, &origin))
        .await
        .map_err(|e| NodeError::Other(e.to_string()))?;
    let (v, recipients, _) = match checked {
        Ok(c) => c,
        Err(p) => return Ok(vec![(seq, p)]),
    };
    // Seen before: no need for its bytes again.
    if !state.is_duplicate(&v)? {
        let parts: Vec<(Digest, u64)> = v
            .attachments
            .iter()
            .copied()
            .zip(v.header.attachments.iter().map(|a| a.size))
            .collect();
        for (i, (digest, size)) in parts.into_iter().enumerate() {
            match crate::stream::fetch(&state, &out, &sinks, seq, i as u32, digest, size).await {
                Ok(()) => {}
                Err(crate::stream::Fetch::Refused(r)) => {
                    return Ok(vec![(seq, Prepared::Refused(r))]);
                }
                Err(crate::stream::Fetch::Deferred(reason)) => {
                    return Ok(vec![(seq, Prepared::Deferred(reason))]);
                }
                Err(crate::stream::Fetch::Failed(e)) => return Err(e),
            }
        }
    }
    Ok(vec![(seq, Prepared::Ok(Box::new(v), recipients))])
}

/// Most transfers verified and stored as one batch.
const MAX_BATCH: usize = 512;

/// Handles a frame that is not a transfer. Most are handed on at once; two
/// can wait, and only they are raced against `stop`: a directory (its merge,
/// off the async threads, cannot be cancelled: given up on, it would run on
/// beside the parent's next copy, so it gets all the time it takes) and a
/// chunk its stream does not take now, given up on after `limit` (the read
/// loop must go on seeing the peer's other frames).
async fn control(
    f: Frame,
    cx: &Ctx,
    stop: &mut watch::Receiver<bool>,
    limit: Duration,
) -> Result<(), LinkError> {
    let (ctl, out, state, peer_is_parent) = (&cx.ctl, &cx.out, &cx.state, cx.peer_is_parent);
    match f {
        Frame::Want(w) => hand_on(cx, &cx.wants, w, "requests for attachment bytes")?,
        Frame::Chunk(c) => {
            to_sink(cx, (c.seq, c.index), Ok((c.offset, c.data)), stop, limit).await?;
        }
        Frame::Unavailable(u) => {
            to_sink(cx, (u.seq, u.index), Err(clipped(u.reason)), stop, limit).await?;
        }
        Frame::Defer(d) => hand_on(
            cx,
            ctl,
            Control::Defer {
                seq: d.seq,
                reason: clipped(d.reason),
                retry_after_ms: d.retry_after_ms,
            },
            ANSWERS,
        )?,
        Frame::Directory(d) if peer_is_parent => {
            let st = state.clone();
            tokio::select! {
                _ = crate::stopped(stop) => return Err(LinkError::Stopped),
                r = tokio::task::spawn_blocking(move || st.set_directory(&d)) => {
                    r.map_err(|e| NodeError::Other(e.to_string()))??;
                }
            }
        }
        Frame::Directory(_) => {
            return Err(LinkError::Handshake(
                "a child may not send a directory".into(),
            ));
        }
        Frame::Ack(a) => hand_on(
            cx,
            ctl,
            Control::Ack {
                seq: a.seq,
                window: a.window,
            },
            ANSWERS,
        )?,
        Frame::Reject(r) => hand_on(
            cx,
            ctl,
            Control::Reject {
                seq: r.seq,
                code: r.code,
                reason: clipped(r.reason),
            },
            ANSWERS,
        )?,
        Frame::Ping(p) => {
            // Never waited for: with the outgoing frames full the peer has
            // proof of life enough, and a peer that pings and never reads
            // must not hold this loop.
            let _ = out.try_send(frame(Frame::Pong(pb::Pong { nonce: p.nonce })));
        }
        Frame::Pong(_) => {}
        Frame::Report(r) if !peer_is_parent => {
            let mut nodes = r.nodes;
            nodes.truncate(MAX_REPORTED_NODES);
            let nodes = state.trusted_report(&cx.peer, nodes);
            state.telemetry.set_report(&cx.peer, nodes);
        }
        Frame::Report(_) => {
            tracing::debug!("a parent sent a report; ignored");
        }
        Frame::Transfer(_) | Frame::Hello(_) | Frame::Welcome(_) => {
            return Err(LinkError::Handshake("unexpected frame mid-session".into()));
        }
    }
    Ok(())
}

/// Hands a chunk, or the sender's word that it has none, to the stream
/// waiting for it. Waiting on a full one pushes back on the sender through
/// HTTP/2 flow control, for `limit` at most.
async fn to_sink(
    cx: &Ctx,
    key: (u64, u32),
    piece: crate::stream::Piece,
    stop: &mut watch::Receiver<bool>,
    limit: Duration,
) -> Result<(), LinkError> {
    let Some(tx) = cx.sinks.lock().ok().and_then(|s| s.get(&key).cloned()) else {
        tracing::debug!(
            seq = key.0,
            index = key.1,
            "chunk for no open stream; ignored"
        );
        return Ok(());
    };
    // Progress of this link's streams (a chunk for none is not).
    if let Ok((_, data)) = &piece {
        cx.sinks
            .received
            .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
    match tx.try_send(piece) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
        Err(mpsc::error::TrySendError::Full(piece)) => tokio::select! {
            _ = crate::stopped(stop) => Err(LinkError::Stopped),
            r = tokio::time::timeout(limit, tx.send(piece)) => r.map(|_| ()).map_err(|_| {
                LinkError::Rpc(Status::deadline_exceeded(format!(
                    "a chunk from the peer could not be handed on within {limit:?}"
                )))
            }),
        },
    }
}

const ANSWERS: &str = "answers (acks, rejects, deferrals)";

/// The longest reason from the peer this node keeps (it is logged, and a
/// refusal's goes into dead letters and notices): a frame may be as large as
/// a message, and the answers waiting here are bounded by count.
const MAX_REASON_BYTES: usize = 1024;

/// `reason`, cut to [`MAX_REASON_BYTES`] on a character boundary.
fn clipped(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

/// How many of its `Want`s, or of its answers, a peer may have waiting
/// here to be served. A well-behaved peer has at most one `Want` per
/// streamed transfer it is receiving, and it ends the link itself past
/// four windows of unanswered transfers; its answers are at most two per
/// transfer of ours in flight (a reject and an ack, or an ack and a
/// deferral), at most one window of them. So four windows, and a little
/// more, are never filled by a peer that waits for what it asked (its window
/// taken as at most `MAX_WINDOW`, in `run_session`).
fn most_waiting(peer_window: u32) -> usize {
    4 * peer_window as usize + 16
}

/// The largest window a peer's is counted as (and this node's may be:
/// `link.window`).
pub const MAX_WINDOW: u32 = 1 << 16;

/// Hands a frame from the peer to the task that serves it, without waiting
/// (the read loop must not). A full channel means a peer sending faster than
/// it could be served ([`most_waiting`]): the link ends before it fills this
/// node's memory, rather than read on and hold whatever it sends.
fn hand_on<T>(cx: &Ctx, tx: &mpsc::Sender<T>, v: T, what: &str) -> Result<(), LinkError> {
    match tx.try_send(v) {
        // Closed: its task has ended, and the session with it.
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => Err(flooded(
            &cx.state,
            format!(
                "the peer sent more than {} {what} without waiting for them to be served",
                tx.max_capacity()
            ),
        )),
    }
}

/// The link ends because the peer sends more than it waits for; counted as
/// input refused on the link (`resource_exhausted`), the reason logged
/// where the session's end is.
fn flooded(state: &NodeState, why: String) -> LinkError {
    state.telemetry.refused("link", Code::ResourceExhausted);
    LinkError::Rpc(Status::resource_exhausted(why))
}

/// Nodes kept from one child's report (a bound on what a child can make us hold).
const MAX_REPORTED_NODES: usize = 10_000;

/// What the receive loop needs to handle control frames.
struct Ctx {
    state: Arc<NodeState>,
    out: mpsc::Sender<pb::LinkFrame>,
    ctl: mpsc::Sender<Control>,
    wants: mpsc::Sender<pb::Want>,
    sinks: crate::stream::Sinks,
    peer_is_parent: bool,
    peer: NodeId,
}

/// Runs one established link until the peer goes away, falls silent, or `stop`.
#[allow(clippy::too_many_arguments)] // one call site per side
pub async fn run_session(
    state: Arc<NodeState>,
    peer: NodeId,
    origin: Origin,
    queue: String,
    mut incoming: Streaming<pb::LinkFrame>,
    outbox: Outbox,
    peer_window: u32,
    params: LinkParams,
    mut stop: watch::Receiver<bool>,
) -> Result<(), LinkError> {
    // A peer cannot lift the bounds sized on its window by announcing a huge
    // one, nor stall the session with none.
    let peer_window = peer_window.clamp(1, MAX_WINDOW);
    // `senders` only produce frames and can stop at once; `receivers` hold
    // transfers that were received and must get to disk and be acknowledged.
    let peer_is_parent = matches!(origin, Origin::Parent(_));
    let out = outbox.frames.clone();
    let mut senders = JoinSet::new();
    let mut receivers = JoinSet::new();
    // Bounded: what the peer sends is read at once, served when its task
    // gets to it; a peer far ahead of that is dropped (`hand_on`).
    let (ctl_tx, ctl_rx) = mpsc::channel(most_waiting(peer_window));
    // Unbounded: the read loop must never wait for `apply`, which may be waiting
    // for a streamed transfer's chunks that only this loop reads. The peer's
    // window bounds the jobs, except after a deferral, when the peer sends
    // again what it had in flight while the skipped jobs still finish here.
    let (prep_tx, prep_rx) = mpsc::unbounded_channel();
    // Transfers read and not yet answered. A peer keeps to the window we give
    // it (twice over, after a deferral); far past that it is misbehaving, and
    // the link ends before its transfers fill this node's memory.
    let unanswered = Arc::new(Unanswered::default());
    let most_unanswered = 4 * params.window.max(1) as usize;
    // By bytes too: a peer's whole messages (up to max_message_bytes each)
    // within its own in-flight bound, four times over as for the count.
    let most_unanswered_bytes = 4 * params.max_inflight_bytes.max(params.max_message_bytes);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel();
    let (want_tx, want_rx) = mpsc::channel(most_waiting(peer_window));
    let cx = Ctx {
        state: state.clone(),
        out: out.clone(),
        ctl: ctl_tx,
        wants: want_tx,
        sinks: Arc::default(),
        peer_is_parent,
        peer: peer.clone(),
    };
    senders.spawn(
        crate::stream::serve(
            state.clone(),
            queue.clone(),
            outbox.chunks.clone(),
            want_rx,
            params.chunk_bytes,
        )
        .in_current_span(),
    );

    senders.spawn(
        push(
            state.clone(),
            queue.clone(),
            out.clone(),
            peer_window,
            params.max_inflight_bytes,
            params.inline_attachment_bytes,
            ctl_rx,
        )
        .in_current_span(),
    );
    receivers.spawn(
        apply(
            state.clone(),
            origin.clone(),
            prep_rx,
            ack_tx,
            unanswered.clone(),
        )
        .in_current_span(),
    );
    receivers.spawn(
        acknowledge(
            state.clone(),
            ack_rx,
            out.clone(),
            params.window,
            state.quotas.retry_after_ms,
        )
        .in_current_span(),
    );
    let hb_out = out.clone();
    let interval = params.heartbeat_interval;
    let hb_state = state.clone();
    senders.spawn(async move {
        let mut tick = tokio::time::interval(interval);
        let mut nonce = 0u64;
        loop {
            tick.tick().await;
            nonce += 1;
            if hb_out
                .send(frame(Frame::Ping(pb::Ping { nonce })))
                .await
                .is_err()
            {
                return Ok(());
            }
            // A child tells its parent what it sees, so that operators above see
            // every node of the tree with its link state.
            if peer_is_parent {
                let nodes = hb_state.node_tree();
                if hb_out
                    .send(frame(Frame::Report(pb::Report { nodes })))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
        }
    });

    // Frames read ahead while gathering a batch of transfers.
    let mut pending: VecDeque<Frame> = VecDeque::new();
    // Streamed transfers of this session waiting for their chunks. They end with
    // it: one left waiting would keep its attachment claimed, and the next
    // session's transfer of the same attachment would wait behind it forever
    // (found by `truc chaos partition`).
    let mut jobs: Vec<tokio::task::AbortHandle> = Vec::new();
    let result = loop {
        if let Some(f) = pending.pop_front() {
            if let Err(e) = control(f, &cx, &mut stop, params.heartbeat_timeout).await {
                break Err(e);
            }
            continue;
        }
        let next = tokio::select! {
            _ = crate::stopped(&mut stop) => break Err(LinkError::Stopped),
            done = senders.join_next() => match done {
                Some(Ok(Err(e))) => break Err(e),
                _ => break Err(LinkError::Closed),
            },
            done = receivers.join_next() => match done {
                Some(Ok(Err(e))) => break Err(e),
                _ => break Err(LinkError::Closed),
            },
            n = tokio::time::timeout(params.heartbeat_timeout, incoming.next()) => n,
        };
        let f = match next {
            Err(_) => break Err(LinkError::Silent(params.heartbeat_timeout)),
            Ok(None) => break Err(LinkError::Closed),
            Ok(Some(Err(status))) => break Err(LinkError::Rpc(status)),
            Ok(Some(Ok(pb::LinkFrame { frame: Some(f) }))) => f,
            Ok(Some(Ok(_))) => continue,
        };
        state.seen(&peer);
        match f {
            Frame::Transfer(t) => {
                // Take every transfer already here: they are verified and stored
                // together, one write and one fsync for the lot.
                let mut batch = vec![t];
                let mut end = None;
                while batch.len() < MAX_BATCH {
                    match incoming.next().now_or_never() {
                        Some(Some(Ok(pb::LinkFrame {
                            frame: Some(Frame::Transfer(t)),
                        }))) => batch.push(t),
                        Some(Some(Ok(pb::LinkFrame { frame: Some(other) }))) => {
                            pending.push_back(other);
                            break;
                        }
                        Some(Some(Ok(_))) => {}
                        Some(Some(Err(status))) => {
                            end = Some(LinkError::Rpc(status));
                            break;
                        }
                        Some(None) => {
                            end = Some(LinkError::Closed);
                            break;
                        }
                        None => break,
                    }
                }
                let sizes: Vec<usize> = batch.iter().map(prost::Message::encoded_len).collect();
                if let Err(why) = unanswered.read(
                    batch.len(),
                    sizes.iter().sum(),
                    most_unanswered,
                    most_unanswered_bytes,
                ) {
                    break Err(flooded(&state, format!("{why} (window {})", params.window)));
                }
                // Inline transfers go in batches; each streamed one is a job of its
                // own that waits for its chunks. Jobs complete in order, each
                // with the bytes it frees from `unanswered` once answered.
                let mut closed = false;
                let mut inline = Vec::new();
                let mut inline_bytes = 0;
                for (t, size) in batch.into_iter().zip(sizes) {
                    if is_streamed(&t) {
                        if !inline.is_empty() {
                            let st = state.clone();
                            let b = std::mem::take(&mut inline);
                            let o = origin.clone();
                            let job = tokio::task::spawn_blocking(move || prepare(&st, b, &o));
                            closed |= prep_tx
                                .send((std::mem::take(&mut inline_bytes), job))
                                .is_err();
                        }
                        let job = tokio::spawn(
                            receive_streamed(
                                state.clone(),
                                cx.out.clone(),
                                cx.sinks.clone(),
                                t,
                                origin.clone(),
                            )
                            .in_current_span(),
                        );
                        jobs.retain(|j| !j.is_finished());
                        jobs.push(job.abort_handle());
                        closed |= prep_tx.send((size, job)).is_err();
                    } else {
                        inline.push(t);
                        inline_bytes += size;
                    }
                }
                if !inline.is_empty() {
                    let st = state.clone();
                    let o = origin.clone();
                    let job = tokio::task::spawn_blocking(move || prepare(&st, inline, &o));
                    closed |= prep_tx.send((inline_bytes, job)).is_err();
                }
                if closed {
                    break Err(LinkError::Closed);
                }
                if let Some(e) = end {
                    break Err(e);
                }
            }
            other => {
                if let Err(e) = control(other, &cx, &mut stop, params.heartbeat_timeout).await {
                    break Err(e);
                }
            }
        }
    };
    senders.abort_all();
    // A streamed transfer waits for chunks only the read loop, now ended,
    // could hand it: it ends here (the peer sends it again), not after the
    // drain's timeout, holding its attachment's claim meanwhile.
    for j in jobs.drain(..) {
        j.abort();
    }
    // Let what was received finish: accepted transfers become durable and are
    // acknowledged if the stream still carries it.
    drop(prep_tx);
    drop(out);
    if matches!(result, Err(LinkError::Stopped)) {
        let drain = async {
            while let Some(done) = receivers.join_next().await {
                if let Ok(Err(e)) = done {
                    tracing::debug!(error = %e, "link task ended");
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    }
    receivers.abort_all();
    tracing::info!(%peer, "link down");
    result
}

/// Sends the queue for the peer, within its window.
async fn push(
    state: Arc<NodeState>,
    queue: String,
    out: mpsc::Sender<pb::LinkFrame>,
    mut window: u32,
    max_bytes: usize,
    inline_max: u64,
    mut ctl: mpsc::Receiver<Control>,
) -> Result<(), LinkError> {
    let mut notify = state.notifier(&queue);
    // The window the peer announced when the link came up: the channels
    // carrying its answers here are sized for it, so an ack cannot raise it.
    let most = window;
    // (seq, bytes) of every transfer sent and not yet acknowledged.
    let mut in_flight: VecDeque<(u64, usize)> = VecDeque::new();
    let mut in_flight_bytes = 0usize;
    let mut last_sent: Option<u64> = None;
    // The highest seq sent in this session: the peer answers nothing past it.
    let mut sent_upto = 0u64;
    // Set by a Defer: nothing is sent before then.
    let mut paused_until: Option<tokio::time::Instant> = None;
    // The transfer the peer deferred: it takes nothing else until that one
    // comes again, so if it is gone (dead-lettered, say) the session restarts.
    let mut deferred: Option<u64> = None;
    // The last transfer the peer deferred, and how many times in a row.
    let mut repeated: (Option<u64>, u32) = (None, 0);
    // A control message read while gathering acks, handled next.
    let mut stashed: Option<Control> = None;
    loop {
        if paused_until.is_some_and(|t| t <= tokio::time::Instant::now()) {
            paused_until = None;
        }
        // Bounded by count (the peer's window) and by bytes (our memory): whole
        // attachments travel in one frame until attachments are streamed.
        while paused_until.is_none()
            && (in_flight.len() as u32) < window
            && (in_flight.is_empty() || in_flight_bytes < max_bytes)
        {
            let room = (window as usize - in_flight.len()).min(64);
            let rows = state.queue_peek(&queue, last_sent, room)?;
            if rows.is_empty() {
                break;
            }
            if let Some(d) = deferred
                && rows[0].0 != d
            {
                return Err(LinkError::Resync(format!(
                    "transfer {d}, which the peer deferred and waits for, is no longer queued here"
                )));
            }
            let st = state.clone();
            let budget = max_bytes.saturating_sub(in_flight_bytes).max(1);
            let loaded = tokio::task::spawn_blocking(move || {
                // Stop loading once the byte budget is spent; the rest waits.
                let mut used = 0usize;
                let mut out = Vec::new();
                for (seq, entry) in rows {
                    if used >= budget {
                        break;
                    }
                    let t = st.load_transfer(seq, &entry, inline_max);
                    used += t.as_ref().map(prost::Message::encoded_len).unwrap_or(0);
                    out.push((seq, t));
                }
                out
            })
            .await
            .map_err(|e| NodeError::Other(e.to_string()))?;
            for (seq, loaded) in loaded {
                last_sent = Some(seq);
                match loaded {
                    Ok(t) => {
                        state.read_ok(&queue, seq);
                        let size = prost::Message::encoded_len(&t);
                        if out.send(frame(Frame::Transfer(t))).await.is_err() {
                            return Err(LinkError::Closed);
                        }
                        in_flight.push_back((seq, size));
                        in_flight_bytes += size;
                        sent_upto = sent_upto.max(seq);
                        if deferred == Some(seq) {
                            deferred = None;
                        }
                    }
                    // A read that failed now is tried again: the session
                    // ends and the next one, after the reconnect backoff,
                    // starts from this entry; for a while.
                    Err(e) if e.is_transient() && state.retry_read(&queue, seq) => {
                        tracing::error!(%queue, seq, error = %e, "cannot read a queued transfer now; the link restarts and tries again");
                        return Err(e.into());
                    }
                    Err(e) => {
                        tracing::error!(%queue, seq, error = %e, "cannot load a queued transfer; moved to dead letters");
                        state.queue_unsendable(&queue, seq, &format!("cannot load it: {e}"))?;
                        if deferred == Some(seq) {
                            return Err(LinkError::Resync(format!(
                                "transfer {seq}, which the peer deferred and waits for, could not be loaded again"
                            )));
                        }
                    }
                }
            }
        }
        let c = match stashed.take() {
            Some(c) => c,
            None => tokio::select! {
                c = ctl.recv() => match c {
                    None => return Ok(()),
                    Some(c) => c,
                },
                _ = notify.changed() => continue,
                _ = async {
                    match paused_until {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => continue,
            },
        };
        match c {
            Control::Ack {
                mut seq,
                window: mut w,
            } => {
                // Acks are cumulative: those already waiting behind this one
                // are applied with it, one store transaction for all. Anything
                // else waits its turn, so that a reject is never overtaken by
                // an ack covering its seq.
                loop {
                    match ctl.try_recv() {
                        Ok(Control::Ack { seq: s, window: nw }) => {
                            seq = seq.max(s);
                            w = nw;
                        }
                        Ok(other) => {
                            stashed = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                window = w.clamp(1, most);
                // An ack past what was sent would drop entries never sent.
                if seq > sent_upto {
                    tracing::warn!(%queue, seq, sent_upto, "peer acknowledged transfers never sent; taken up to the last one sent");
                    seq = sent_upto;
                }
                while let Some((_, size)) = in_flight.front().filter(|(s, _)| *s <= seq).copied() {
                    in_flight.pop_front();
                    in_flight_bytes -= size;
                }
                let st = state.clone();
                let q = queue.clone();
                tokio::task::spawn_blocking(move || st.queue_ack(&q, seq))
                    .await
                    .map_err(|e| NodeError::Other(e.to_string()))??;
            }
            Control::Reject { seq, .. } if seq > sent_upto => {
                tracing::warn!(%queue, seq, sent_upto, "peer refused a transfer never sent; ignored");
            }
            Control::Reject { seq, code, reason } => {
                if let Some(i) = in_flight.iter().position(|(s, _)| *s == seq) {
                    in_flight_bytes -= in_flight[i].1;
                    in_flight.remove(i);
                }
                if !state.queue_reject(&queue, seq, code, &reason)? {
                    // Gone from the queue already: an attachment this node
                    // could not serve, dead-lettered before the peer heard.
                    tracing::debug!(%queue, seq, code = ?Code::from_i32(code), %reason, "peer refused a transfer no longer queued here");
                } else if queue.starts_with("child:") {
                    // This node verified it before queueing it: a child that refuses it
                    // means corruption or tampering on the way, or configs that disagree.
                    tracing::error!(%queue, seq, code = ?Code::from_i32(code), %reason, "peer refused a transfer");
                } else {
                    tracing::warn!(%queue, seq, code = ?Code::from_i32(code), %reason, "peer refused a transfer");
                }
            }
            Control::Defer {
                seq,
                reason,
                retry_after_ms,
            } => {
                // The peer took nothing from `seq` on: send it all again later.
                while let Some((_, size)) = in_flight.back().filter(|(s, _)| *s >= seq).copied() {
                    in_flight.pop_back();
                    in_flight_bytes -= size;
                }
                last_sent = seq.checked_sub(1);
                deferred = Some(seq);
                let again = if repeated.0 == Some(seq) {
                    repeated.1 + 1
                } else {
                    0
                };
                repeated = (Some(seq), again);
                let wait = defer_wait(retry_after_ms, again);
                paused_until = Some(tokio::time::Instant::now() + wait);
                tracing::warn!(%queue, seq, %reason, ?wait, times = again + 1, "peer deferred a transfer; the queue keeps it");
                let st = state.clone();
                let q = queue.clone();
                let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
                tokio::task::spawn_blocking(move || st.queue_deferred(&q, seq, &reason, wait_ms))
                    .await
                    .map_err(|e| NodeError::Other(e.to_string()))??;
            }
        }
    }
}

/// The longest wait before a transfer deferred again and again is sent again.
const DEFER_WAIT_MAX: Duration = Duration::from_secs(30);

/// How long to wait before sending again a transfer the peer deferred, the
/// `again`-th time in a row: its hint, doubled each time up to
/// [`DEFER_WAIT_MAX`]. A peer that cannot take it for hours (a stale
/// revocation list there) is then not sent, and does not check, the same
/// window every second.
fn defer_wait(retry_after_ms: u32, again: u32) -> Duration {
    let hint = Duration::from_millis(u64::from(retry_after_ms.max(50)));
    hint.saturating_mul(1 << again.min(16))
        .min(DEFER_WAIT_MAX.max(hint))
}

type PrepJob = tokio::task::JoinHandle<Result<Vec<(u64, Prepared)>, NodeError>>;

/// A job preparing transfers, with their encoded bytes (freed from
/// [`Unanswered`] when they are answered).
type SizedJob = (usize, PrepJob);

/// Transfers read and not yet answered, by count and by encoded bytes: what
/// a peer that does not wait for answers can make this node hold.
#[derive(Default)]
struct Unanswered {
    count: AtomicUsize,
    bytes: AtomicUsize,
}

impl Unanswered {
    /// Counts `n` transfers of `bytes` as read; over `most` transfers or
    /// `most_bytes`, the reason the link ends.
    fn read(&self, n: usize, bytes: usize, most: usize, most_bytes: usize) -> Result<(), String> {
        if self.count.fetch_add(n, Ordering::Relaxed) + n > most {
            return Err(format!(
                "the peer sent more than {most} transfers without waiting for answers"
            ));
        }
        if self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes > most_bytes {
            return Err(format!(
                "the peer sent more than {most_bytes} bytes of transfers without waiting for answers"
            ));
        }
        Ok(())
    }

    /// `n` transfers of `bytes` are being answered.
    fn answered(&self, n: usize, bytes: usize) {
        self.count.fetch_sub(n, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// A prepared transfer on its way to an outcome.
enum Step {
    Deferred(String),
    Refused(Refusal),
    Duplicate(Ticket, &'static str),
    Accept(DocId),
}

enum Outcome {
    Stored(u64, Ticket),
    Refused(u64, Refusal),
    Deferred(u64, String),
}

/// Accepts prepared transfers in arrival order. After a deferral nothing later of
/// this session is taken until the deferred transfer comes again.
async fn apply(
    state: Arc<NodeState>,
    origin: Origin,
    mut jobs: mpsc::UnboundedReceiver<SizedJob>,
    acks: mpsc::UnboundedSender<Outcome>,
    unanswered: Arc<Unanswered>,
) -> Result<(), LinkError> {
    let mut deferred_from: Option<u64> = None;
    // A job taken while gathering, not finished yet; an error of one that was.
    let mut held: Option<SizedJob> = None;
    let mut failed: Option<LinkError> = None;
    loop {
        if let Some(e) = failed.take() {
            return Err(e);
        }
        let (mut bytes, job) = match held.take() {
            Some(j) => j,
            None => match jobs.recv().await {
                Some(j) => j,
                None => break,
            },
        };
        let mut prepared = job.await.map_err(|e| NodeError::Other(e.to_string()))??;
        // Jobs behind it that are already prepared are accepted with it: one
        // store transaction for all, in arrival order as before.
        while let Ok((more_bytes, next)) = jobs.try_recv() {
            if !next.is_finished() {
                held = Some((more_bytes, next));
                break;
            }
            bytes += more_bytes;
            match next.await {
                Ok(Ok(more)) => prepared.extend(more),
                Ok(Err(e)) => {
                    failed = Some(e.into());
                    break;
                }
                Err(e) => {
                    failed = Some(NodeError::Other(e.to_string()).into());
                    break;
                }
            }
        }
        unanswered.answered(prepared.len(), bytes);
        // Arrival order first: what was refused or deferred while prepared, and
        // what goes to the store. Nothing after a deferral is taken.
        let mut steps: Vec<(u64, Step)> = Vec::with_capacity(prepared.len());
        let mut items = Vec::new();
        for (seq, p) in prepared {
            if let Some(d) = deferred_from {
                if seq != d {
                    continue;
                }
                deferred_from = None;
            }
            steps.push((
                seq,
                match p {
                    Prepared::Deferred(reason) => {
                        deferred_from = Some(seq);
                        Step::Deferred(reason)
                    }
                    Prepared::Refused(r) => Step::Refused(r),
                    Prepared::Duplicate(ticket, kind) => Step::Duplicate(ticket, kind),
                    Prepared::Ok(v, recipients) => {
                        let doc_id = v.doc_id;
                        items.push((*v, Some(recipients)));
                        Step::Accept(doc_id)
                    }
                },
            ));
        }
        let (mut verdicts, ticket) = if items.is_empty() {
            (Vec::new().into_iter(), state.commit().current())
        } else {
            let st = state.clone();
            let o = origin.clone();
            let (verdicts, ticket) = tokio::task::spawn_blocking(move || st.accept_batch(items, &o))
                .await
                .map_err(|e| NodeError::Other(e.to_string()))?
                .inspect_err(|e| {
                    tracing::error!(error = %e, "cannot store transfers; dropping the link so the peer retries");
                })?;
            (verdicts.into_iter(), ticket)
        };
        // Then the outcomes, up to the first deferral, whether it came while
        // prepared or from the store (a quota): the peer sends everything from
        // it again, so nothing after it may be acknowledged or refused now, or
        // the cumulative ack would cover the deferred transfer.
        let mut outcomes = Vec::with_capacity(steps.len());
        for (seq, step) in steps {
            let outcome = match step {
                Step::Deferred(reason) => {
                    state
                        .stats
                        .deferred
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Outcome::Deferred(seq, reason)
                }
                Step::Refused(r) => {
                    state
                        .stats
                        .refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    state.telemetry.refused("link", r.code);
                    tracing::warn!(origin = %origin.label(), seq, code = ?r.code, reason = %r.reason, "transfer refused");
                    Outcome::Refused(seq, r)
                }
                // Counted once answered: one skipped after a deferral comes
                // again.
                Step::Duplicate(taken, kind) => {
                    state
                        .stats
                        .duplicates
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    state.telemetry.document_in(kind, "duplicate");
                    Outcome::Stored(seq, taken)
                }
                Step::Accept(doc_id) => match verdicts.next() {
                    Some(Verdict::Stored | Verdict::Duplicate) => Outcome::Stored(seq, ticket),
                    Some(Verdict::Refused(r)) => {
                        tracing::warn!(%doc_id, origin = %origin.label(), code = ?r.code, reason = %r, "transfer refused");
                        Outcome::Refused(seq, r)
                    }
                    Some(Verdict::Deferred(reason)) => Outcome::Deferred(seq, reason),
                    None => {
                        return Err(NodeError::Other(
                            "the store gave fewer verdicts than transfers".into(),
                        )
                        .into());
                    }
                },
            };
            if let Outcome::Deferred(_, reason) = &outcome {
                tracing::warn!(origin = %origin.label(), seq, %reason, "transfer deferred; nothing after it is taken until it comes again");
                deferred_from = Some(seq);
                outcomes.push(outcome);
                break;
            }
            outcomes.push(outcome);
        }
        for o in outcomes {
            if acks.send(o).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Sends rejects and cumulative acks, each ack only after its batch is durable,
/// then any deferral.
async fn acknowledge(
    state: Arc<NodeState>,
    mut outcomes: mpsc::UnboundedReceiver<Outcome>,
    out: mpsc::Sender<pb::LinkFrame>,
    window: u32,
    retry_after_ms: u32,
) -> Result<(), LinkError> {
    while let Some(first) = outcomes.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = outcomes.try_recv() {
            batch.push(more);
        }
        let mut upto = 0;
        let mut ticket = None;
        let mut rejects = Vec::new();
        let mut defer = None;
        for o in batch {
            match o {
                Outcome::Stored(seq, t) => {
                    upto = upto.max(seq);
                    ticket = ticket.max(Some(t));
                }
                Outcome::Refused(seq, r) => {
                    upto = upto.max(seq);
                    rejects.push(pb::Reject {
                        seq,
                        code: r.code as i32,
                        reason: r.reason,
                    });
                }
                Outcome::Deferred(seq, reason) => {
                    defer = Some(pb::Defer {
                        seq,
                        reason,
                        retry_after_ms,
                    });
                }
            }
        }
        if let Some(t) = ticket {
            // Invariant 1: nothing is acknowledged before it is fsynced.
            state.durable(t).await?;
            state.hooks.before_ack("link ack");
        }
        for r in rejects {
            if out.send(frame(Frame::Reject(r))).await.is_err() {
                return Ok(());
            }
        }
        if upto > 0
            && out
                .send(frame(Frame::Ack(pb::Ack { seq: upto, window })))
                .await
                .is_err()
        {
            return Ok(());
        }
        if let Some(d) = defer
            && out.send(frame(Frame::Defer(d))).await.is_err()
        {
            return Ok(());
        }
    }
    Ok(())
}

/// Live sessions by child: an id and the switch that ends it.
type Sessions = HashMap<NodeId, (u64, Vec<u8>, watch::Sender<bool>)>;

/// The parent side: accepts links from children.
#[derive(Clone)]
pub struct LinkService {
    state: Arc<NodeState>,
    params: LinkParams,
    stop: watch::Receiver<bool>,
    sessions: Arc<Mutex<Sessions>>,
    next_session: Arc<std::sync::atomic::AtomicU64>,
}

impl LinkService {
    pub fn new(state: Arc<NodeState>, params: LinkParams, stop: watch::Receiver<bool>) -> Self {
        Self {
            state,
            params,
            stop,
            sessions: Arc::default(),
            next_session: Arc::default(),
        }
    }

    /// Closes the links of children whose certificate serial is in `revoked`;
    /// returns them.
    pub fn close_revoked(&self, revoked: &std::collections::HashSet<Vec<u8>>) -> Vec<NodeId> {
        let Ok(s) = self.sessions.lock() else {
            return Vec::new();
        };
        // The session removes itself (and marks the child down) as it ends.
        s.iter()
            .filter(|(_, (_, serial, _))| revoked.contains(serial))
            .map(|(n, (_, _, stop))| {
                let _ = stop.send(true);
                n.clone()
            })
            .collect()
    }

    /// Children with a link up now.
    pub fn connected(&self) -> Vec<NodeId> {
        self.sessions
            .lock()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<pb::LinkFrame, Status>> + Send>>;

#[tonic::async_trait]
impl pb::link_server::Link for LinkService {
    type OpenStream = FrameStream;

    async fn open(
        &self,
        req: Request<Streaming<pb::LinkFrame>>,
    ) -> Result<Response<FrameStream>, Status> {
        let certs = req
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let node = truc_pki::identity::node_id(leaf)
            .map_err(|e| Status::permission_denied(format!("not a node certificate: {e}")))?;
        let serial = truc_pki::identity::serial(leaf).unwrap_or_default();
        let cert_not_after = truc_pki::identity::cert_info(leaf)
            .map(|i| i.not_after)
            .unwrap_or(0);
        if !self.state.routing().is_child(&node) {
            tracing::warn!(%node, "refused link from a node that is not a child here");
            return Err(Status::permission_denied(format!(
                "node {node} is not a child of {}",
                self.state.node_id
            )));
        }
        let mut incoming = req.into_inner();
        let hello = match tokio::time::timeout(self.params.handshake_timeout, incoming.next()).await
        {
            Ok(Some(Ok(pb::LinkFrame {
                frame: Some(Frame::Hello(h)),
            }))) => h,
            Ok(Some(Err(s))) => return Err(s),
            Err(_) => return Err(Status::deadline_exceeded("no hello")),
            _ => return Err(Status::invalid_argument("the first frame must be hello")),
        };
        if hello.node_id != node.as_str() {
            return Err(Status::permission_denied(format!(
                "hello names {} but the certificate names {node}",
                hello.node_id
            )));
        }
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "link protocol {} is not supported (this node speaks {PROTOCOL_VERSION})",
                hello.protocol_version
            )));
        }
        let (outbox, frames) = outbox(self.params.window);
        let tx = outbox.frames.clone();
        tx.send(frame(Frame::Welcome(pb::Welcome {
            node_id: self.state.node_id.to_string(),
            protocol_version: PROTOCOL_VERSION,
            software_version: env!("CARGO_PKG_VERSION").into(),
            window: self.params.window,
        })))
        .await
        .map_err(|_| Status::unavailable("closing"))?;
        tx.send(frame(Frame::Directory(self.state.directory().to_pb())))
            .await
            .map_err(|_| Status::unavailable("closing"))?;

        // A new link from the same child replaces the old one, which may not have
        // noticed yet that its TCP connection is gone.
        let id = self
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (sup_tx, mut sup_rx) = watch::channel(false);
        if let Ok(mut s) = self.sessions.lock()
            && let Some((_, _, old)) = s.insert(node.clone(), (id, serial, sup_tx))
        {
            let _ = old.send(true);
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut node_stop = self.stop.clone();
        // The certificate was checked at the handshake; a session does not
        // outlive it. It lasts through its notAfter second (as the handshake
        // check counts it): the session ends as the next second starts, when
        // the next handshake is refused.
        let expires_in = Duration::from_millis(
            u64::try_from((cert_not_after + 1) * 1000 - crate::state::now_ms()).unwrap_or(0),
        );
        let expiring = node.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = crate::stopped(&mut node_stop) => {}
                _ = crate::stopped(&mut sup_rx) => {}
                _ = tokio::time::sleep(expires_in), if cert_not_after > 0 => {
                    tracing::warn!(peer = %expiring, "the child's certificate has expired; its link is closed");
                }
            }
            let _ = stop_tx.send(true);
        });
        // The child hears of every change of the directory while the link is up.
        let (done_tx, mut done_rx) = watch::channel(false);
        {
            let mut changes = self.state.directory_changes();
            let st = self.state.clone();
            let tx = tx.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = crate::stopped(&mut stop) => return,
                        _ = crate::stopped(&mut done_rx) => return,
                        r = changes.changed() => if r.is_err() { return },
                    }
                    if tx
                        .send(frame(Frame::Directory(st.directory().to_pb())))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
        let state = self.state.clone();
        let params = self.params.clone();
        let sessions = self.sessions.clone();
        let span = tracing::info_span!("link", node = %state.node_id, peer = %node);
        tracing::info!(parent: &span, window = hello.window, "link up");
        tokio::spawn(
            async move {
                let started = Instant::now();
                state.set_connected(&node, true);
                state
                    .telemetry
                    .link_up(&node, &hello.software_version, cert_not_after);
                let st = state.clone();
                let r = run_session(
                    state,
                    node.clone(),
                    Origin::Child(node.clone()),
                    format!("child:{node}"),
                    incoming,
                    outbox,
                    hello.window,
                    params,
                    stop_rx,
                )
                .await;
                let _ = done_tx.send(true);
                if let Ok(mut s) = sessions.lock()
                    && s.get(&node).is_some_and(|(sid, _, _)| *sid == id)
                {
                    s.remove(&node);
                    st.set_connected(&node, false);
                    st.telemetry.link_down(&node);
                }
                match r {
                    Err(LinkError::Stopped) | Err(LinkError::Closed) | Ok(()) => {}
                    Err(e) => tracing::info!(error = %e, after = ?started.elapsed(), "link ended"),
                }
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(frames.map(Ok))))
    }
}

/// The child side: keeps one link to the parent up, reconnecting with backoff.
/// `tls` changes when the revocation lists do: the link then ends, as it does
/// when the node stops (what was received is acknowledged first), and the next
/// handshake checks the parent's certificate against the new lists.
pub async fn dial_parent(
    state: Arc<NodeState>,
    address: String,
    parent: NodeId,
    mut tls: watch::Receiver<Arc<rustls::ClientConfig>>,
    params: LinkParams,
    mut stop: watch::Receiver<bool>,
    up: watch::Sender<bool>,
) {
    let mut delay = params.reconnect_min;
    // Whether the lists can still change (no reloading without lists).
    let mut reloading = true;
    loop {
        if *stop.borrow() {
            return;
        }
        // When this attempt's link came up (the parent's welcome), if it did.
        let mut came_up: Option<Instant> = None;
        let mut up_now = up.subscribe();
        let config = tls.borrow_and_update().clone();
        let (end_tx, end_rx) = watch::channel(false);
        let session = connect_once(&state, &address, &parent, config, &params, end_rx, &up);
        tokio::pin!(session);
        // The session is told to end once (`end_tx` says whether it was), and
        // polled until it has.
        let mut reloaded = false;
        let r = loop {
            let ending = *end_tx.borrow();
            tokio::select! {
                r = &mut session => break r,
                Ok(()) = up_now.changed(), if came_up.is_none() => {
                    if *up_now.borrow_and_update() {
                        came_up = Some(Instant::now());
                    }
                }
                _ = crate::stopped(&mut stop), if !ending => {
                    end_tx.send_replace(true);
                }
                changed = tls.changed(), if !ending && reloading => match changed {
                    Ok(()) => {
                        reloaded = true;
                        end_tx.send_replace(true);
                    }
                    Err(_) => reloading = false,
                },
            }
        };
        let _ = up.send(false);
        if reloaded && !*stop.borrow() {
            tracing::warn!(%parent, "revocation lists changed: the link to the parent starts again under them");
            delay = params.reconnect_min;
            continue;
        }
        match r {
            Err(LinkError::Stopped) => return,
            Err(e) => {
                tracing::warn!(%parent, %address, error = %e, "link to parent down; will retry")
            }
            Ok(()) => {}
        }
        // Back to the shortest wait only after a link that came up and
        // lasted: attempts that time out, or a parent that welcomes and then
        // says nothing, wait longer and longer.
        if came_up.is_some_and(|t| t.elapsed() > params.heartbeat_timeout) {
            delay = params.reconnect_min;
        }
        // Full jitter: many edges reconnecting after a hub restart spread out.
        let wait = delay.mul_f64(0.5 + fastrand::f64() * 0.5);
        tokio::select! {
            _ = crate::stopped(&mut stop) => return,
            _ = tokio::time::sleep(wait) => {}
        }
        delay = (delay * 2).min(params.reconnect_max);
    }
}

async fn connect_once(
    state: &Arc<NodeState>,
    address: &str,
    parent: &NodeId,
    tls: Arc<rustls::ClientConfig>,
    params: &LinkParams,
    stop: watch::Receiver<bool>,
    up: &watch::Sender<bool>,
) -> Result<(), LinkError> {
    let channel = crate::transport::tls_channel(
        address,
        parent.as_str(),
        tls,
        params.connect_timeout,
        params.heartbeat_interval,
        params.stream_window_bytes,
    )
    .map_err(LinkError::Handshake)?;
    let mut client = pb::link_client::LinkClient::new(channel)
        .max_decoding_message_size(params.max_message_bytes)
        .max_encoding_message_size(params.max_message_bytes);
    let (outbox, frames) = outbox(params.window);
    let tx = outbox.frames.clone();
    tx.send(frame(Frame::Hello(pb::Hello {
        node_id: state.node_id.to_string(),
        protocol_version: PROTOCOL_VERSION,
        software_version: env!("CARGO_PKG_VERSION").into(),
        window: params.window,
    })))
    .await
    .map_err(|_| LinkError::Closed)?;
    let open = tokio::time::timeout(
        params.handshake_timeout + params.connect_timeout,
        client.open(frames),
    );
    let mut incoming = open
        .await
        .map_err(|_| LinkError::Handshake("parent did not answer".into()))??
        .into_inner();
    let welcome = match tokio::time::timeout(params.handshake_timeout, incoming.next()).await {
        Ok(Some(Ok(pb::LinkFrame {
            frame: Some(Frame::Welcome(w)),
        }))) => w,
        Ok(Some(Err(s))) => return Err(LinkError::Rpc(s)),
        Err(_) => return Err(LinkError::Handshake("no welcome".into())),
        _ => {
            return Err(LinkError::Handshake(
                "the first frame must be welcome".into(),
            ));
        }
    };
    if welcome.node_id != parent.as_str() {
        return Err(LinkError::Handshake(format!(
            "expected parent {parent}, welcomed by {}",
            welcome.node_id
        )));
    }
    let span = tracing::info_span!("link", node = %state.node_id, peer = %parent);
    tracing::info!(parent: &span, window = welcome.window, "link up");
    let _ = up.send(true);
    state.set_connected(parent, true);
    state
        .telemetry
        .link_up(parent, &welcome.software_version, 0);
    let r = run_session(
        state.clone(),
        parent.clone(),
        Origin::Parent(parent.clone()),
        "parent".into(),
        incoming,
        outbox,
        welcome.window,
        params.clone(),
        stop,
    )
    .instrument(span)
    .await;
    state.set_connected(parent, false);
    state.telemetry.link_down(parent);
    r
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::Ordering};

    /// What vpcp, a child, sends.
    fn from_vpcp() -> Origin {
        Origin::Child("vpcp".parse().unwrap())
    }

    use truc_store::{Batch, FaultyStore, MemoryStore, Space};

    use super::*;
    use crate::state::testing::Fixture;

    fn stored(state: &NodeState, seq: u64) -> Outcome {
        let mut b = Batch::new();
        b.put(Space::Meta, seq.to_be_bytes().to_vec(), vec![1]);
        let t = state.commit().apply(b).unwrap();
        Outcome::Stored(seq, t)
    }

    /// `apply` for a child, fed prepared batches, its answers read back as
    /// (seq, "stored" | "refused" | "deferred").
    struct Applier {
        jobs: mpsc::UnboundedSender<SizedJob>,
        outcomes: mpsc::UnboundedReceiver<Outcome>,
        task: tokio::task::JoinHandle<Result<(), LinkError>>,
    }

    impl Applier {
        fn start(state: &Arc<NodeState>) -> Self {
            let (jobs, jrx) = mpsc::unbounded_channel();
            let (otx, outcomes) = mpsc::unbounded_channel();
            let origin = Origin::Child("vpcp".parse().unwrap());
            let task = tokio::spawn(apply(state.clone(), origin, jrx, otx, Arc::default()));
            Self {
                jobs,
                outcomes,
                task,
            }
        }

        fn send(&self, batch: Vec<(u64, Prepared)>) {
            self.jobs
                .send((0, tokio::spawn(async move { Ok(batch) })))
                .unwrap();
        }

        fn name(o: Outcome) -> (u64, &'static str) {
            match o {
                Outcome::Stored(s, _) => (s, "stored"),
                Outcome::Refused(s, _) => (s, "refused"),
                Outcome::Deferred(s, _) => (s, "deferred"),
            }
        }

        async fn next(&mut self) -> (u64, &'static str) {
            Self::name(self.outcomes.recv().await.unwrap())
        }

        /// Everything answered after the last batch.
        async fn finish(mut self) -> Vec<(u64, &'static str)> {
            drop(self.jobs);
            self.task.await.unwrap().unwrap();
            std::iter::from_fn(|| self.outcomes.try_recv().ok())
                .map(Self::name)
                .collect()
        }
    }

    /// A signature this node cannot check now for a reason of its own (its
    /// revocation list is past its next update) defers the transfer: the
    /// sender keeps it and retries, where a refusal would dead-letter it at
    /// every edge; a bad signature is still refused. With a fresh list the
    /// same transfer passes.
    #[test]
    fn a_stale_revocation_list_here_defers_a_transfer_rather_than_refusing_it() {
        use rustls::pki_types::{CertificateRevocationListDer, pem::PemObject};
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let v = f.verified("000.00.00.G22", &["000.00.00.H41"]);
        let transfer = || pb::Transfer {
            seq: 1,
            envelope: Some(v.envelope.clone()),
            recipients: vec!["000.00.00.H41".into()],
            ..Default::default()
        };
        let list = |days| {
            CertificateRevocationListDer::from_pem_slice(
                f.ca.crl_valid(&[], days).unwrap().as_bytes(),
            )
            .unwrap()
        };
        hub.verifiers.agencies.set_crls(&[list(-1)]).unwrap();
        match check(&hub, transfer(), &from_vpcp())
            .map(|_| ())
            .unwrap_err()
        {
            Prepared::Deferred(reason) => {
                assert!(reason.contains("cannot be checked here now"), "{reason}");
                assert!(reason.contains("due for renewal"), "{reason}");
            }
            _ => panic!("not deferred"),
        }
        // Not worth waiting for with a bad signature: refused for good.
        let mut forged = transfer();
        if let Some(env) = forged.envelope.as_mut() {
            let last = env.signature.len() - 1;
            env.signature[last] ^= 1;
        }
        match check(&hub, forged, &from_vpcp()).map(|_| ()).unwrap_err() {
            Prepared::Refused(r) => assert_eq!(r.code, Code::Unauthenticated, "{r}"),
            _ => panic!("not refused"),
        }
        hub.verifiers.agencies.set_crls(&[list(30)]).unwrap();
        assert!(check(&hub, transfer(), &from_vpcp()).is_ok());
    }

    /// A signer whose issuer no list here covers (the lists name another
    /// CA) is deferred as with a stale list, and the node raises a `crl`
    /// alert naming the issuer and the setting to fix, which a stale list's
    /// alert (by file) would not show.
    #[test]
    fn a_signer_whose_issuer_has_no_list_here_is_deferred_and_alerted() {
        use rustls::pki_types::{CertificateRevocationListDer, pem::PemObject};
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let other = truc_pki::dev::DevCa::generate("another signing CA").unwrap();
        let list_of = |ca: &truc_pki::dev::DevCa| {
            CertificateRevocationListDer::from_pem_slice(ca.crl_valid(&[], 30).unwrap().as_bytes())
                .unwrap()
        };
        hub.verifiers.agencies.set_crls(&[list_of(&other)]).unwrap();
        assert!(hub.verifiers.agencies.unlisted_issuers(0).is_empty());
        let v = f.verified("000.00.00.G22", &["000.00.00.H41"]);
        let transfer = |v: &Verified| pb::Transfer {
            seq: 1,
            envelope: Some(v.envelope.clone()),
            recipients: vec!["000.00.00.H41".into()],
            ..Default::default()
        };
        // A certificate replayed under a forged signature raises nothing.
        let mut forged = transfer(&v);
        if let Some(env) = forged.envelope.as_mut() {
            let last = env.signature.len() - 1;
            env.signature[last] ^= 1;
        }
        assert!(check(&hub, forged, &from_vpcp()).is_err());
        assert!(hub.verifiers.agencies.unlisted_issuers(0).is_empty());
        match check(&hub, transfer(&v), &from_vpcp())
            .map(|_| ())
            .unwrap_err()
        {
            Prepared::Deferred(reason) => {
                assert!(
                    reason.contains("no revocation list here covers"),
                    "{reason}"
                );
                assert!(
                    reason.contains("test signing"),
                    "names the issuer: {reason}"
                );
            }
            _ => panic!("not deferred"),
        }
        let alerts = hub.alerts(&Default::default(), &Ok(Default::default()));
        let a = alerts
            .iter()
            .find(|a| a.kind == "crl")
            .expect("a crl alert");
        assert!(
            a.subject.starts_with("signing:") && a.subject.contains("test signing"),
            "{a:?}"
        );
        assert!(a.detail.contains("signing.crls"), "{a:?}");
        // With the issuer's own list added, the alert goes and it passes.
        hub.verifiers
            .agencies
            .set_crls(&[list_of(&other), list_of(&f.ca)])
            .unwrap();
        let alerts = hub.alerts(&Default::default(), &Ok(Default::default()));
        assert!(!alerts.iter().any(|a| a.kind == "crl"), "{alerts:?}");
        assert!(check(&hub, transfer(&v), &from_vpcp()).is_ok());
    }

    /// A resend of a message this node took before (the link lost the
    /// acknowledgement) that fails its checks now (here: the revocation
    /// list went stale meanwhile; a certificate revoked or expired since is
    /// the same) is a duplicate, not a refusal its sender would dead-letter.
    /// One that asks for recipients it was not taken for, or that was never
    /// taken, is checked as any.
    #[test]
    fn a_resend_of_what_was_taken_is_a_duplicate_even_when_its_checks_fail_now() {
        use rustls::pki_types::{CertificateRevocationListDer, pem::PemObject};
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let v = f.verified("000.00.00.G22", &["000.00.00.H41", "000.00.00.H14"]);
        let transfer = |v: &Verified, to: &[&str]| pb::Transfer {
            seq: 1,
            envelope: Some(v.envelope.clone()),
            recipients: to.iter().map(|o| o.to_string()).collect(),
            ..Default::default()
        };
        hub.accept_batch(
            vec![(v.clone(), Some(vec!["000.00.00.H41".parse().unwrap()]))],
            &Origin::Child("vpcp".parse().unwrap()),
        )
        .unwrap();
        let stale = CertificateRevocationListDer::from_pem_slice(
            f.ca.crl_valid(&[], -1).unwrap().as_bytes(),
        )
        .unwrap();
        hub.verifiers.agencies.set_crls(&[stale]).unwrap();
        let outcome = |t| match check(&hub, t, &from_vpcp()) {
            Ok(_) => "checked",
            Err(Prepared::Duplicate(..)) => "duplicate",
            Err(Prepared::Deferred(_)) => "deferred",
            Err(_) => "other",
        };
        assert_eq!(outcome(transfer(&v, &["000.00.00.H41"])), "duplicate");
        assert_eq!(
            outcome(transfer(&v, &["000.00.00.H14"])),
            "deferred",
            "not taken for H14"
        );
        let other = f.verified("000.00.00.G22", &["000.00.00.H41"]);
        assert_eq!(
            outcome(transfer(&other, &["000.00.00.H41"])),
            "deferred",
            "never taken"
        );
    }

    /// A status (so a receipt too: not a document) resent after a lost
    /// acknowledgement, by the peer it first came from, whose checks fail
    /// now (a stale revocation list here) is a duplicate; from another peer
    /// it is checked as any message.
    #[test]
    fn a_resent_status_whose_checks_fail_now_is_a_duplicate() {
        use rustls::pki_types::{CertificateRevocationListDer, pem::PemObject};
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let doc = f.verified("000.00.00.G22", &["000.00.00.H41"]);
        hub.accept(doc.clone(), &from_vpcp(), None).unwrap();
        let status = f.seal_verified(&pb::Header {
            format_version: envelope::FORMAT_VERSION,
            doc_id: DocId::new_v7().to_string(),
            kind: pb::Kind::Status as i32,
            from: "000.00.00.H41".into(),
            to: vec!["000.00.00.G22".into()],
            status: Some(pb::Status {
                code: "01".into(),
                for_from: "000.00.00.G22".into(),
                for_doc_id: doc.doc_id.to_string(),
                envelope_sha256: doc.header_sha256.0.to_vec(),
                ..Default::default()
            }),
            ..Default::default()
        });
        let nghean = Origin::Child("nghean".parse().unwrap());
        hub.accept(status.clone(), &nghean, None).unwrap();
        let stale = CertificateRevocationListDer::from_pem_slice(
            f.ca.crl_valid(&[], -1).unwrap().as_bytes(),
        )
        .unwrap();
        hub.verifiers.agencies.set_crls(&[stale]).unwrap();
        let transfer = |to: &str| pb::Transfer {
            seq: 1,
            envelope: Some(status.envelope.clone()),
            recipients: vec![to.into()],
            ..Default::default()
        };
        let outcome = |origin: &Origin, to: &str| match check(&hub, transfer(to), origin) {
            Ok(_) => "checked",
            Err(Prepared::Duplicate(_, kind)) => kind,
            Err(Prepared::Deferred(_)) => "deferred",
            Err(_) => "other",
        };
        assert_eq!(outcome(&nghean, "000.00.00.G22"), "status");
        // Recipients asked for are a document's matter only.
        assert_eq!(outcome(&nghean, "000.00.00.H14"), "status");
        assert_eq!(
            outcome(&from_vpcp(), "000.00.00.G22"),
            "deferred",
            "not where it came from"
        );
    }

    fn to_nghean(f: &Fixture) -> Prepared {
        Prepared::Ok(
            Box::new(f.verified("000.00.00.G22", &["000.00.00.H41"])),
            vec!["000.00.00.H41".parse().unwrap()],
        )
    }

    #[tokio::test]
    async fn nothing_after_a_deferral_is_answered_so_no_ack_covers_it() {
        // nghean's queue holds one document: the second is deferred by the store.
        let mut f = Fixture::new();
        f.quotas.max_queued_per_recipient = 1;

        // A transfer refused while prepared, after one the store defers: the
        // refusal's cumulative ack would cover the deferred one, and the
        // sender would drop it.
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let a = Applier::start(&hub);
        let refused = Prepared::Refused(Refusal::invalid("signature expired"));
        a.send(vec![(1, to_nghean(&f)), (2, to_nghean(&f)), (3, refused)]);
        assert_eq!(a.finish().await, [(1, "stored"), (2, "deferred")]);

        // A transfer deferred while prepared (a full disk for its stream),
        // after one the store defers: the earlier deferral is the one to answer,
        // and the one waited for.
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let mut a = Applier::start(&hub);
        let disk_full = Prepared::Deferred("disk full".into());
        a.send(vec![(1, to_nghean(&f)), (2, to_nghean(&f)), (3, disk_full)]);
        assert_eq!(a.next().await, (1, "stored"));
        assert_eq!(a.next().await, (2, "deferred"));
        // Sent before the peer saw the deferral: not taken. Then 2 again; the
        // queue is still full.
        a.send(vec![(4, to_nghean(&f))]);
        a.send(vec![(2, to_nghean(&f))]);
        assert_eq!(a.finish().await, [(2, "deferred")]);
        assert_eq!(
            hub.queue_depth("child:nghean"),
            1,
            "nothing after 1 was stored"
        );
    }

    /// A resend taken before (a duplicate found while prepared) is counted
    /// when it is answered: not when a deferral before it in its batch
    /// leaves it unanswered (it comes again, and is counted then, once).
    #[tokio::test]
    async fn a_duplicate_is_counted_once_answered() {
        // nghean's queue holds one document: a second is deferred by the store.
        let mut f = Fixture::new();
        f.quotas.max_queued_per_recipient = 1;
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let dup = || Prepared::Duplicate(hub.commit().current(), "document");
        let mut a = Applier::start(&hub);
        // Deferred while prepared, then by the store: the duplicate behind
        // either is not answered.
        a.send(vec![
            (1, Prepared::Deferred("disk full".into())),
            (2, dup()),
        ]);
        assert_eq!(a.next().await, (1, "deferred"));
        a.send(vec![(1, to_nghean(&f)), (2, to_nghean(&f)), (3, dup())]);
        assert_eq!(a.next().await, (1, "stored"));
        assert_eq!(a.next().await, (2, "deferred"));
        assert_eq!(hub.stats.duplicates.load(Ordering::Relaxed), 0);
        a.send(vec![(2, dup()), (3, dup())]);
        assert_eq!(a.finish().await, [(2, "stored"), (3, "stored")]);
        assert_eq!(hub.stats.duplicates.load(Ordering::Relaxed), 2);
    }

    /// The read loop's context of a session with child nghean.
    fn child_cx(
        state: Arc<NodeState>,
        out: mpsc::Sender<pb::LinkFrame>,
        ctl: mpsc::Sender<Control>,
        wants: mpsc::Sender<pb::Want>,
    ) -> Ctx {
        Ctx {
            state,
            out,
            ctl,
            wants,
            sinks: Arc::default(),
            peer_is_parent: false,
            peer: "nghean".parse().unwrap(),
        }
    }

    /// `push` of nghean's queue at the hub, with the peer's side in hand.
    struct Pushing {
        frames: mpsc::Receiver<pb::LinkFrame>,
        ctl: mpsc::Sender<Control>,
        task: tokio::task::JoinHandle<Result<(), LinkError>>,
    }

    impl Pushing {
        fn start(hub: &Arc<NodeState>) -> Self {
            Self::with_window(hub, 8)
        }

        fn with_window(hub: &Arc<NodeState>, window: u32) -> Self {
            let (out, frames) = mpsc::channel(16);
            let (ctl, ctl_rx) = mpsc::channel(most_waiting(window));
            let queue = "child:nghean".to_string();
            let task = tokio::spawn(push(
                hub.clone(),
                queue,
                out,
                window,
                1 << 20,
                1 << 20,
                ctl_rx,
            ));
            Self { frames, ctl, task }
        }

        async fn sent(&mut self) -> u64 {
            match self.frames.recv().await.and_then(|f| f.frame) {
                Some(Frame::Transfer(t)) => t.seq,
                other => panic!("expected a transfer, got {other:?}"),
            }
        }

        fn defer(&self, seq: u64) {
            self.ctl
                .try_send(Control::Defer {
                    seq,
                    reason: "queue full".into(),
                    retry_after_ms: 50,
                })
                .unwrap();
        }

        /// How the push ends while the peer waits for `seq`; sending another
        /// transfer instead fails the test.
        async fn ended(mut self, seq: u64) -> Result<(), LinkError> {
            tokio::select! {
                f = self.frames.recv() => match f.and_then(|f| f.frame) {
                    Some(Frame::Transfer(t)) => panic!(
                        "sent transfer {} while the peer waits for {seq}, which is gone",
                        t.seq
                    ),
                    _ => self.task.await.unwrap(),
                },
                r = &mut self.task => r.unwrap(),
            }
        }
    }

    /// A hub with two documents queued for nghean.
    fn hub_with_two_queued() -> Arc<NodeState> {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let docs = (0..2)
            .map(|_| (f.verified("000.00.00.G22", &["000.00.00.H41"]), None))
            .collect();
        hub.accept_batch(docs, &Origin::Child("vpcp".parse().unwrap()))
            .unwrap();
        hub
    }

    /// A transfer its peer defers again and again is sent again after a wait
    /// that doubles each time, up to 30 s: a peer that cannot take it for
    /// hours is not sent the same window every second. (Time is virtual.)
    #[tokio::test(start_paused = true)]
    async fn a_transfer_deferred_again_and_again_waits_longer_each_time() {
        let hub = hub_with_two_queued();
        let mut p = Pushing::start(&hub);
        let (first, second) = (p.sent().await, p.sent().await);
        let mut waits = Vec::new();
        for _ in 0..4 {
            p.defer(first);
            let t = tokio::time::Instant::now();
            assert_eq!((p.sent().await, p.sent().await), (first, second));
            waits.push(t.elapsed());
        }
        for (i, w) in waits.iter().enumerate() {
            let hint = Duration::from_millis(50 << i);
            assert!(*w >= hint && *w < hint * 2, "{waits:?}");
        }
        assert_eq!(defer_wait(1000, 20), DEFER_WAIT_MAX);
        assert_eq!(
            defer_wait(60_000, 3),
            Duration::from_secs(60),
            "never below the hint"
        );
    }

    #[tokio::test]
    async fn a_sender_starts_again_when_the_transfer_its_peer_waits_for_is_gone() {
        let hub = hub_with_two_queued();
        let mut p = Pushing::start(&hub);
        let (first, second) = (p.sent().await, p.sent().await);

        // Deferred: both again, from the deferred one.
        p.defer(first);
        assert_eq!((p.sent().await, p.sent().await), (first, second));

        // Deferred again, but gone from the queue meanwhile: the peer would
        // wait for it for ever, so the session ends and starts afresh.
        hub.queue_reject("child:nghean", first, Code::DataLoss as i32, "cannot load")
            .unwrap();
        p.defer(first);
        let ended = p.ended(first).await;
        assert!(
            matches!(&ended, Err(LinkError::Resync(why)) if why.contains(&format!("transfer {first}"))),
            "{ended:?}"
        );
    }

    #[tokio::test]
    async fn a_sender_starts_again_when_the_transfer_its_peer_waits_for_cannot_be_loaded() {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let one = f.with_attachment(&hub, b"phu luc mot");
        let its_file = one.attachments[0];
        let two = f.with_attachment(&hub, b"phu luc hai");
        hub.accept_batch(
            vec![(one, None), (two, None)],
            &Origin::Child("vpcp".parse().unwrap()),
        )
        .unwrap();
        let mut p = Pushing::start(&hub);
        let first = p.sent().await;
        p.sent().await;

        // Deferred, and its attachment gone meanwhile: the resend cannot load
        // it, so it goes to dead letters and the session starts afresh.
        hub.blobs.remove(&its_file).unwrap();
        p.defer(first);
        let ended = p.ended(first).await;
        assert!(
            matches!(&ended, Err(LinkError::Resync(why)) if why.contains("could not be loaded again")),
            "{ended:?}"
        );
    }

    /// An ack or a refusal past what was sent touches nothing unsent: the
    /// entry waiting behind a full window is still sent.
    #[tokio::test]
    async fn an_answer_past_what_was_sent_drops_nothing_unsent() {
        let hub = hub_with_two_queued();
        let mut p = Pushing::with_window(&hub, 1);
        let first = p.sent().await;
        // Queued behind the full window, not sent.
        let (unsent, _) = hub
            .queue_peek("child:nghean", Some(first), 1)
            .unwrap()
            .remove(0);
        for c in [
            Control::Reject {
                seq: unsent,
                code: Code::InvalidArgument as i32,
                reason: "made up".into(),
            },
            Control::Ack {
                seq: u64::MAX,
                window: 1,
            },
        ] {
            p.ctl.try_send(c).unwrap();
        }
        let second = tokio::time::timeout(Duration::from_secs(30), p.sent())
            .await
            .expect("the second entry is sent");
        assert_eq!(second, unsent);
        assert!(hub.dead("child:nghean").unwrap().is_empty());
    }

    /// What a peer sends without waiting for answers is bounded by bytes as
    /// well as by count, and freed as it is answered.
    #[test]
    fn unanswered_transfers_are_bounded_by_bytes() {
        let big = |seq| pb::Transfer {
            seq,
            envelope: Some(pb::SignedEnvelope {
                header_bytes: vec![0; 1 << 20],
                ..Default::default()
            }),
            ..Default::default()
        };
        let size = |t: pb::Transfer| prost::Message::encoded_len(&t);
        let u = Unanswered::default();
        u.read(2, size(big(1)) + size(big(2)), 100, 3 << 20)
            .unwrap();
        u.answered(1, size(big(1)));
        u.read(1, size(big(3)), 100, 3 << 20).unwrap();
        let e = u
            .read(2, size(big(4)) + size(big(5)), 100, 3 << 20)
            .unwrap_err();
        assert!(e.contains("bytes"), "{e}");
    }

    /// A peer that pings and never reads cannot hold the read loop on a
    /// full outgoing channel, and a frame that cannot be handled (a chunk
    /// its stream does not take) gives way to `stop`.
    #[tokio::test]
    async fn a_peer_that_reads_nothing_cannot_hold_the_read_loop() {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let (out, _frames) = mpsc::channel(1);
        out.try_send(frame(Frame::Pong(pb::Pong { nonce: 0 })))
            .unwrap();
        let (ctl, _ctl) = mpsc::channel(1);
        let (wants, _wants) = mpsc::channel(1);
        let cx = child_cx(hub, out, ctl, wants);
        let (stop_tx, mut stop) = watch::channel(false);
        let limit = Duration::from_secs(5);
        let ping = Frame::Ping(pb::Ping { nonce: 1 });
        control(ping, &cx, &mut stop, limit)
            .await
            .expect("a ping is answered without waiting, or not at all");

        let (sink, _chunks) = mpsc::channel(1);
        sink.try_send(Ok((0, Vec::new()))).unwrap();
        cx.sinks.lock().unwrap().insert((7, 0), sink);
        stop_tx.send(true).unwrap();
        let chunk = Frame::Chunk(pb::Chunk {
            seq: 7,
            index: 0,
            offset: 0,
            data: vec![1],
        });
        let r = control(chunk, &cx, &mut stop, Duration::from_secs(3600)).await;
        assert!(matches!(r, Err(LinkError::Stopped)), "{r:?}");
    }

    /// A peer that sends requests for attachment bytes, or answers, much
    /// faster than they are served cannot make this node hold them without
    /// limit: the link ends, saying why, and the refusal is counted.
    #[tokio::test]
    async fn a_peer_flooding_wants_or_answers_is_dropped() {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let most = most_waiting(1);
        // Nobody serves them, as when their tasks fall far behind.
        let (ctl, _ctl) = mpsc::channel(most);
        let (wants, _wants) = mpsc::channel(most);
        let (out, _frames) = mpsc::channel(1);
        let cx = child_cx(hub.clone(), out, ctl, wants);
        let (_stop_tx, mut stop) = watch::channel(false);
        let limit = Duration::from_secs(5);
        for (what, f) in [
            (
                "requests for attachment bytes",
                Frame::Want(pb::Want::default()),
            ),
            ("answers", Frame::Ack(pb::Ack { seq: 1, window: 1 })),
        ] {
            let mut handled = 0;
            let ended = loop {
                match control(f.clone(), &cx, &mut stop, limit).await {
                    Ok(()) if handled <= most => handled += 1,
                    other => break other,
                }
            };
            assert_eq!(
                handled, most,
                "{what}: a well-behaved peer's worth is taken"
            );
            assert!(
                matches!(&ended, Err(LinkError::Rpc(s))
                    if s.code() == Code::ResourceExhausted && s.message().contains(what)),
                "{what}: {ended:?}"
            );
        }
        let metrics = crate::telemetry::render(&crate::telemetry::Telemetry::registry(
            &hub,
            Default::default(),
        ));
        assert!(
            metrics.lines().any(|l| l.contains("source=\"link\"")
                && l.contains("reason=\"resource_exhausted\"")
                && l.ends_with(" 2")),
            "{metrics}"
        );
    }

    /// A `Want` the sender cannot serve (its attachment gone, its transfer
    /// no longer queued) is answered at once, so the receiver need not wait
    /// for chunks that never come, and serving goes on.
    #[tokio::test]
    async fn a_want_that_cannot_be_served_is_answered_and_serving_goes_on() {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let kept = f.with_attachment(&hub, b"phu luc mot");
        let gone = f.with_attachment(&hub, b"phu luc hai");
        let gone_file = gone.attachments[0];
        let gone_id = gone.doc_id.to_string();
        hub.accept_batch(
            vec![(kept, None), (gone, None)],
            &Origin::Child("vpcp".parse().unwrap()),
        )
        .unwrap();
        let queued: Vec<u64> = hub
            .queue_peek("child:nghean", None, 2)
            .unwrap()
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        hub.blobs.remove(&gone_file).unwrap();
        let (wants, want_rx) = mpsc::channel(8);
        let (out, mut frames) = mpsc::channel(8);
        let serving = tokio::spawn(crate::stream::serve(
            hub.clone(),
            "child:nghean".into(),
            out,
            want_rx,
            1 << 10,
        ));
        let never_queued = 999;
        for (seq, index) in [
            (queued[1], 0),
            (never_queued, 0),
            (queued[0], 7),
            (queued[0], 0),
        ] {
            let w = pb::Want {
                seq,
                index,
                offset: 0,
            };
            wants.send(w).await.unwrap();
        }
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(30), frames.recv())
                .await
                .expect("answered at once")
                .and_then(|f| f.frame)
        };
        let f = next().await;
        assert!(
            matches!(&f, Some(Frame::Unavailable(u)) if u.seq == queued[1] && u.index == 0),
            "{f:?}"
        );
        let f = next().await;
        assert!(
            matches!(&f, Some(Frame::Unavailable(u)) if u.seq == never_queued && u.reason.contains("no longer queued")),
            "{f:?}"
        );
        // An attachment the entry does not have: the Want is wrong, not the
        // entry, which stays queued and is served next.
        let f = next().await;
        assert!(
            matches!(&f, Some(Frame::Unavailable(u)) if u.seq == queued[0] && u.index == 7),
            "{f:?}"
        );
        let f = next().await;
        assert!(
            matches!(&f, Some(Frame::Chunk(c)) if c.seq == queued[0] && c.data == b"phu luc mot"),
            "{f:?}"
        );
        assert!(!serving.is_finished(), "{:?}", serving.await);
        // The entry whose file is gone went to dead letters here too: a peer
        // that does not know `Unavailable` is not sent it again and again.
        let left: Vec<u64> = hub
            .queue_peek("child:nghean", None, 2)
            .unwrap()
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        assert_eq!(left, vec![queued[0]]);
        // The peer's refusal that follows finds nothing to dead-letter (and
        // is not logged as tampering).
        let refused = hub.queue_reject(
            "child:nghean",
            queued[1],
            Code::DataLoss as i32,
            "the sender cannot serve attachment 0",
        );
        assert!(!refused.unwrap());
        failed_here(&hub, &gone_id, "child:nghean: cannot read attachment 0");
    }

    /// The audit of `doc_id` tells its dead letter as this node's failure
    /// (`detail` first), not as a refusal by the peer.
    fn failed_here(hub: &NodeState, doc_id: &str, detail: &str) {
        let trail = hub.audit_trail(doc_id).unwrap();
        let lines: Vec<_> = trail.iter().map(|e| (&e.event, &e.detail)).collect();
        assert!(
            lines
                .iter()
                .any(|(event, d)| *event == "cannot be sent" && d.starts_with(detail)),
            "{lines:?}"
        );
        assert!(
            !lines.iter().any(|(event, _)| event.contains("refused")),
            "{lines:?}"
        );
    }

    /// A peer's refusal is kept to a kilobyte of reason: the answers waiting
    /// here are bounded by count, and each may be as large as a message.
    #[tokio::test]
    async fn a_peers_reason_is_kept_to_a_kilobyte() {
        let f = Fixture::new();
        let (ctl, mut answers) = mpsc::channel(4);
        let (wants, _wants) = mpsc::channel(1);
        let (out, _frames) = mpsc::channel(1);
        let cx = child_cx(f.hub(Arc::new(MemoryStore::new())), out, ctl, wants);
        let (_stop_tx, mut stop) = watch::channel(false);
        let long = "không nhận được ".repeat(100_000);
        let reject = Frame::Reject(pb::Reject {
            seq: 1,
            code: Code::InvalidArgument as i32,
            reason: long.clone(),
        });
        control(reject, &cx, &mut stop, Duration::from_secs(5))
            .await
            .unwrap();
        let Some(Control::Reject { reason, .. }) = answers.recv().await else {
            panic!("no reject handed on");
        };
        assert!(reason.len() <= MAX_REASON_BYTES + 3, "{}", reason.len());
        assert!(long.starts_with(reason.trim_end_matches('…')), "{reason}");
        assert_eq!(clipped("ngắn".into()), "ngắn");
    }

    /// While a session is replaced, two senders wait on one queue: a new
    /// entry wakes both, so the old one, sending it on its dying stream,
    /// cannot take the only wake-up and leave the new one waiting for the
    /// next entry.
    #[tokio::test]
    async fn a_new_entry_wakes_every_sender_of_its_queue() {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        let (mut old, mut new) = (Pushing::start(&hub), Pushing::start(&hub));
        // One thread: both run to their wait before the test goes on.
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        hub.accept(
            f.verified("000.00.00.G22", &["000.00.00.H41"]),
            &Origin::Child("vpcp".parse().unwrap()),
            None,
        )
        .unwrap();
        old.sent().await;
        old.task.abort();
        tokio::time::timeout(Duration::from_secs(30), new.sent())
            .await
            .expect("the new session sends the entry");
    }

    /// A queued transfer that cannot be read now (a disk or database that
    /// failed one read) is tried again by the next session: it is not
    /// dead-lettered, nor its sender told it is undeliverable.
    #[tokio::test]
    async fn a_transfer_that_cannot_be_read_now_is_tried_again_not_given_up() {
        let f = Fixture::new();
        let hub = f.hub(Arc::new(MemoryStore::new()));
        // An attachment kept as a file of its own, which cannot be read now.
        let v = f.with_attachment(&hub, &vec![9u8; 100 << 10]);
        let file = hub.blobs.path(&v.attachments[0]);
        let id = v.doc_id.to_string();
        hub.accept(v, &Origin::Child("vpcp".parse().unwrap()), None)
            .unwrap();
        let bytes = std::fs::read(&file).unwrap();
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        let p = Pushing::start(&hub);
        // Given up on instead, the session would go on waiting for acks.
        let ended = tokio::time::timeout(Duration::from_secs(30), p.task)
            .await
            .expect("the session ends to try again")
            .unwrap();
        assert!(
            matches!(&ended, Err(LinkError::Node(e)) if e.is_transient()),
            "{ended:?}"
        );
        assert_eq!(hub.queue_depth("child:nghean"), 1, "still queued");
        assert!(hub.dead("child:nghean").unwrap().is_empty());

        // Still unreadable long after: given up on, its sender told.
        hub.set_read_retry_ms(0);
        let p = Pushing::start(&hub);
        tokio::time::timeout(Duration::from_secs(30), async {
            while hub.dead("child:nghean").unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("dead-lettered after trying for a while");
        p.task.abort();
        failed_here(&hub, &id, "child:nghean: cannot load it");
        let dead = hub.dead("child:nghean").unwrap();
        assert!(
            dead[0]
                .reason
                .starts_with("cannot be sent from hub on child:nghean: cannot load it"),
            "{}",
            dead[0].reason
        );

        // Readable again: a new document goes through.
        std::fs::remove_dir(&file).unwrap();
        std::fs::write(&file, bytes).unwrap();
        hub.accept(
            f.verified("000.00.00.G22", &["000.00.00.H41"]),
            &Origin::Child("vpcp".parse().unwrap()),
            None,
        )
        .unwrap();
        let mut p = Pushing::start(&hub);
        p.sent().await;

        // Requeued, it is told as what it was: not sent by this node, not
        // refused by the peer.
        assert_eq!(hub.requeue(&id.parse().unwrap(), None).unwrap().entries, 1);
        let trail = hub.audit_trail(&id).unwrap();
        let requeued = trail
            .iter()
            .find(|e| e.event == "requeued")
            .expect("requeue audited");
        assert!(
            requeued.detail.contains(
                "by an operator (cannot be sent from hub on child:nghean: cannot load it"
            ) && !requeued.detail.contains("refused"),
            "{}",
            requeued.detail
        );
    }

    #[tokio::test]
    async fn acks_follow_the_fsync_and_never_precede_it() {
        let f = Fixture::new();
        let (store, plan) = FaultyStore::new(MemoryStore::new());
        let state = f.hub(Arc::new(store));
        let (otx, orx) = mpsc::unbounded_channel();
        let (ftx, mut frx) = mpsc::channel(16);
        otx.send(stored(&state, 1)).unwrap();
        otx.send(Outcome::Refused(2, Refusal::invalid("bad")))
            .unwrap();
        otx.send(stored(&state, 3)).unwrap();
        drop(otx);
        acknowledge(state.clone(), orx, ftx, 8, 1000).await.unwrap();
        let frames: Vec<_> = std::iter::from_fn(|| frx.try_recv().ok())
            .filter_map(|f| f.frame)
            .collect();
        assert!(matches!(&frames[0], Frame::Reject(r) if r.seq == 2));
        assert!(matches!(&frames[1], Frame::Ack(a) if a.seq == 3 && a.window == 8));
        assert!(state.commit().stats().flushes.load(Ordering::SeqCst) >= 1);

        // When the fsync fails, nothing is acknowledged and the link ends.
        plan.fail_flush.store(true, Ordering::SeqCst);
        let (otx, orx) = mpsc::unbounded_channel();
        let (ftx, mut frx) = mpsc::channel(16);
        otx.send(stored(&state, 4)).unwrap();
        drop(otx);
        assert!(acknowledge(state, orx, ftx, 8, 1000).await.is_err());
        assert!(
            frx.try_recv().is_err(),
            "an ack went out for data that is not on disk"
        );
    }
}
