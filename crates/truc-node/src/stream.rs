//! Attachments larger than a transfer carries inline travel as streams of chunks,
//! asked for by the receiver from where its durable partial copy ends.
//!
//! Receiver: for each missing attachment of a transfer it claims the digest (one
//! writer per digest on the node, others wait for it), opens the partial file at its
//! durable offset, sends `Want{seq, index, offset}`, writes the chunks in order,
//! fsyncs every `storage.sync_every_bytes` and records the durable offset, and at the
//! end checks the whole against the SHA-256 of the signed manifest before the
//! attachment counts as stored. Memory per stream is a few chunks; the HTTP/2 window
//! and a small channel push back on the sender.
//!
//! Sender: serves `Want`s one at a time from the blob file, chunk by chunk; one
//! it cannot serve (the transfer no longer queued, an offset past the end, the
//! file gone or unreadable for good, before its first byte or after some) is
//! answered `Unavailable`, and the receiver refuses that transfer at once; an
//! unreadable one also goes to dead letters here (a peer that does not know
//! `Unavailable` never refuses it). One it cannot read now ends the session, to
//! be tried again by the next, for `READ_RETRY_MS` as `push` tries an entry it
//! cannot load. Bytes served are not checked here: a damaged copy reaches the
//! receiver, whose check of the whole refuses it.

use std::{
    collections::HashMap,
    io::SeekFrom,
    sync::{Arc, Mutex},
};

use tokio::{
    io::{AsyncReadExt, AsyncSeekExt},
    sync::mpsc,
};
use truc_proto::v1::{self as pb, link_frame::Frame};
use truc_store::{BlobError, Digest};

use crate::{
    error::{NodeError, Refusal},
    state::{Claim, NodeState},
};

/// What a stream's writer is handed: a chunk (offset, bytes), or why the
/// sender cannot serve it.
pub type Piece = Result<(u64, Vec<u8>), String>;

/// Chunk writers of one session, by (seq, attachment index).
pub type Sinks = Arc<SinkTable>;

/// The chunk writers of one link session, and the streamed bytes it received.
#[derive(Default)]
pub struct SinkTable {
    streams: Mutex<StreamSinks>,
    /// Bytes of chunks this session received, for any stream: one waiting its
    /// turn behind another of the same link waits while these grow.
    pub received: std::sync::atomic::AtomicU64,
}

impl SinkTable {
    pub fn lock(&self) -> std::sync::LockResult<std::sync::MutexGuard<'_, StreamSinks>> {
        self.streams.lock()
    }
}

/// The writer of each stream of a session, by (seq, attachment index).
type StreamSinks = HashMap<(u64, u32), mpsc::Sender<Piece>>;

/// The longest wait for the next chunk of a streamed attachment before the
/// session ends (to resume from the durable offset in the next one).
const CHUNK_STALL: std::time::Duration = std::time::Duration::from_secs(120);

/// How fetching one attachment ended, when it did not end well.
pub enum Fetch {
    /// The bytes are not the signed ones: refuse the transfer for good.
    Refused(Refusal),
    /// Not now (disk full): the sender keeps it and retries.
    Deferred(String),
    /// The link or the disk failed: drop the link, the peer resends.
    Failed(NodeError),
}

impl From<NodeError> for Fetch {
    fn from(e: NodeError) -> Self {
        Fetch::Failed(e)
    }
}

impl From<BlobError> for Fetch {
    fn from(e: BlobError) -> Self {
        if e.is_disk_full() {
            Fetch::Deferred(e.to_string())
        } else {
            Fetch::Failed(e.into())
        }
    }
}

/// Removes a sink when its fetch ends, however it ends.
struct SinkGuard {
    sinks: Sinks,
    key: (u64, u32),
}

impl Drop for SinkGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.sinks.lock() {
            s.remove(&self.key);
        }
    }
}

/// Runs `f`, which may wait for the disk, without holding up other tasks
/// (inline on a current-thread runtime, where it cannot move them).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Gets attachment `index` of transfer `seq` onto this node's disk, resuming a
/// partial copy if there is one.
pub async fn fetch(
    state: &Arc<NodeState>,
    out: &mpsc::Sender<pb::LinkFrame>,
    sinks: &Sinks,
    seq: u64,
    index: u32,
    digest: Digest,
    size: u64,
) -> Result<(), Fetch> {
    let guard = loop {
        // It may sync a directory: off the runtime's workers.
        if blocking(|| state.blobs.contains_durably(&digest))? {
            return Ok(());
        }
        match state.claim_partial(digest) {
            Claim::Mine(g) => break g,
            // Another transfer (the same attachment in another document, or an
            // older session) is writing it: wait for it, then look again.
            Claim::Busy(mut rx) => {
                let _ = rx.wait_for(|r| r.is_some()).await;
            }
        }
    };
    if blocking(|| state.blobs.contains_durably(&digest))? {
        guard.done();
        return Ok(());
    }
    let name = digest.hex();
    // A resumed copy that does not verify may have been damaged here (a bad
    // disk, a crash, an operator's mistake): fetch it once more from the start
    // before blaming the sender.
    let mut fresh = false;
    loop {
        let resume = if fresh {
            0
        } else {
            state.partial_offset(&name)?
        };
        state
            .blobs
            .check_space(size.saturating_sub(resume), state.storage.min_free_bytes)?;
        let mut partial = blocking(|| state.blobs.partial(&name, size, resume))?;
        let resumed = partial.offset() > 0;
        let (tx, mut rx) = mpsc::channel::<Piece>(4);
        if let Ok(mut s) = sinks.lock() {
            s.insert((seq, index), tx);
        }
        let _sink = SinkGuard {
            sinks: sinks.clone(),
            key: (seq, index),
        };
        if resumed {
            state
                .stats
                .streams_resumed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(attachment = %name, offset = partial.offset(), size, "resuming an attachment from its durable offset");
        }
        let want = pb::Want {
            seq,
            index,
            offset: partial.offset(),
        };
        out.send(pb::LinkFrame {
            frame: Some(Frame::Want(want)),
        })
        .await
        .map_err(|_| Fetch::Failed(NodeError::Other("link closed".into())))?;
        let every = state.storage.sync_every_bytes.max(1);
        while !partial.is_complete() {
            // A peer that keeps the link alive but sends no chunk would hold
            // this transfer, the ones behind it and the attachment's claim.
            // One waiting its turn behind another attachment (the sender
            // serves them one at a time) waits while streamed bytes arrive
            // on this link (other links' do not count: they say nothing of
            // this peer).
            let mut seen = sinks.received.load(std::sync::atomic::Ordering::Relaxed);
            let next = loop {
                match tokio::time::timeout(CHUNK_STALL, rx.recv()).await {
                    Ok(next) => break next,
                    Err(_) => {
                        let now = sinks.received.load(std::sync::atomic::Ordering::Relaxed);
                        if now == seen {
                            return Err(Fetch::Failed(NodeError::Other(format!(
                                "no chunk of attachment {name} for {}s at {} of {size} bytes, nor of any other on this link",
                                CHUNK_STALL.as_secs(),
                                partial.offset()
                            ))));
                        }
                        seen = now;
                    }
                }
            };
            let Some(piece) = next else {
                return Err(Fetch::Failed(NodeError::Other(
                    "link closed mid-stream".into(),
                )));
            };
            // The partial copy stays: a resend may resume it; none coming, the
            // sweep of abandoned partials takes it after `orphan_grace_ms`.
            let (at, data) = piece.map_err(|why| {
                Fetch::Refused(Refusal::new(
                    tonic::Code::DataLoss,
                    format!("the sender cannot serve attachment {index} of transfer {seq}: {why}"),
                ))
            })?;
            let n = data.len() as u64;
            blocking(|| partial.write(at, &data)).map_err(|e| match e {
                e @ (BlobError::OutOfOrder { .. } | BlobError::TooLong { .. }) => {
                    Fetch::Refused(Refusal::invalid(format!("attachment {name}: {e}")))
                }
                other => other.into(),
            })?;
            state
                .stats
                .stream_bytes_received
                .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            if partial.offset() - partial.synced() >= every && !partial.is_complete() {
                let durable = blocking(|| partial.sync())?;
                // The offset must survive a crash of this node, or a resume starts over.
                let t = state.record_partial(&name, durable)?;
                state.durable(t).await?;
            }
        }
        match blocking(|| partial.finish(&state.blobs, Some(&digest))) {
            Ok(_) => break,
            Err(BlobError::Mismatch { .. }) if resumed && !fresh => {
                // Its recorded offset goes; `partial(…, 0)` truncates the file.
                state.clear_partial(&name)?;
                tracing::warn!(attachment = %name, "the resumed partial copy does not verify; fetching it again from the start");
                fresh = true;
            }
            Err(BlobError::Mismatch { .. }) => {
                let _ = state.clear_partial(&name);
                return Err(Fetch::Refused(Refusal::invalid(format!(
                    "attachment {index} of transfer {seq}: bytes do not match the signed sha-256 {name}"
                ))));
            }
            Err(e) => return Err(e.into()),
        }
    }
    state.clear_partial(&name)?;
    guard.done();
    Ok(())
}

/// Serves the peer's `Want`s for the queue `queue`, one at a time.
pub async fn serve(
    state: Arc<NodeState>,
    queue: String,
    out: mpsc::Sender<pb::LinkFrame>,
    mut wants: mpsc::Receiver<pb::Want>,
    chunk_bytes: usize,
) -> Result<(), crate::link::LinkError> {
    // Failures to read are counted apart from `push`'s, which forgets them
    // each time it loads the entry again.
    let key = format!("{queue} attachments");
    while let Some(w) = wants.recv().await {
        let st = state.clone();
        let q = queue.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<_, NodeError> {
            let Some(entry) = st.queue_entry(&q, w.seq)? else {
                return Ok(None);
            };
            Ok(Some(st.attachment_of(
                &entry.from,
                &entry.doc_id,
                w.index as usize,
            )?))
        })
        .await
        .map_err(|e| NodeError::Other(e.to_string()))?;
        let served = match found {
            Ok(Some((digest, size, name))) if w.offset <= size => {
                send_chunks(&state, &out, &w, (digest, size, &name), chunk_bytes).await
            }
            Ok(Some((_, size, _))) => {
                tracing::warn!(
                    seq = w.seq,
                    offset = w.offset,
                    size,
                    "want beyond the end of the attachment"
                );
                unavailable(
                    &out,
                    &w,
                    format!("offset {} is past its end ({size} bytes)", w.offset),
                )
                .await;
                continue;
            }
            Ok(None) => {
                tracing::debug!(seq = w.seq, "want for a transfer that is no longer queued");
                unavailable(&out, &w, "the transfer is no longer queued here".into()).await;
                continue;
            }
            // The store could not be read now: tried again below.
            Err(e) if e.is_transient() => Err(e),
            // The Want names what the entry does not have (an attachment
            // index past its last): the peer's request is wrong, not the
            // entry, which stays queued.
            Err(e) => {
                tracing::warn!(%queue, seq = w.seq, index = w.index, error = %e, "want for what the transfer does not have");
                unavailable(&out, &w, e.to_string()).await;
                continue;
            }
        };
        match served {
            Ok(true) => state.read_ok(&key, w.seq),
            // The link closed.
            Ok(false) => return Ok(()),
            // As `push` does with an entry it cannot read now: the session
            // ends and the next one, after the reconnect backoff, asks again;
            // for a while.
            Err(e) if e.is_transient() && state.retry_read(&key, w.seq) => {
                tracing::error!(%queue, seq = w.seq, error = %e, "cannot read a queued attachment now; the link restarts and tries again");
                return Err(e.into());
            }
            // Gone, damaged or unreadable for good, before its first byte or
            // after some: the peer is told, and the entry moves to dead
            // letters here as `push` moves one it cannot load (a peer that
            // does not know `Unavailable` would wait for the chunks instead).
            Err(e) => {
                // Dead-lettered before the peer hears of it: its refusal,
                // quick to come back, would otherwise be taken for the cause.
                // Not dead-lettered (the store failing): the session ends
                // with the entry still queued, and the peer is not told.
                let what = format!("cannot read attachment {}", w.index);
                state.queue_unsendable(&queue, w.seq, &format!("{what}: {e}"))?;
                tracing::error!(%queue, seq = w.seq, error = %e, "cannot serve a queued attachment; moved to dead letters");
                unavailable(&out, &w, format!("{what} at sender: {e}")).await;
            }
        }
    }
    Ok(())
}

/// Streams what `w` asks of the attachment `(digest, size, name)`: true once
/// every chunk is handed to the link, false if the link closed first.
async fn send_chunks(
    state: &Arc<NodeState>,
    out: &mpsc::Sender<pb::LinkFrame>,
    w: &pb::Want,
    (digest, size, name): (Digest, u64, &str),
    chunk_bytes: usize,
) -> Result<bool, NodeError> {
    let mut file = blob_reader(state, digest, w.offset, false).await?;
    tracing::debug!(seq = w.seq, attachment = %name, from = w.offset, size, "streaming attachment");
    let mut offset = w.offset;
    while offset < size {
        let len = ((size - offset) as usize).min(chunk_bytes);
        let mut buf = vec![0u8; len];
        file.read_exact(&mut buf)
            .await
            .map_err(NodeError::io(format!("read {name}")))?;
        let chunk = pb::Chunk {
            seq: w.seq,
            index: w.index,
            offset,
            data: buf,
        };
        if out
            .send(pb::LinkFrame {
                frame: Some(Frame::Chunk(chunk)),
            })
            .await
            .is_err()
        {
            return Ok(false);
        }
        state.count_streamed(&digest, offset, offset + len as u64);
        offset += len as u64;
    }
    Ok(true)
}

/// Tells the peer its `Want` cannot be served (a closed link needs no answer).
async fn unavailable(out: &mpsc::Sender<pb::LinkFrame>, w: &pb::Want, reason: String) {
    let u = pb::Unavailable {
        seq: w.seq,
        index: w.index,
        reason,
    };
    let _ = out
        .send(pb::LinkFrame {
            frame: Some(Frame::Unavailable(u)),
        })
        .await;
}

/// Passes a stored blob's bytes through while hashing them. At the end, a
/// digest other than the blob's name is an `InvalidData` error in place of
/// the last bytes: a damaged copy is never served as if whole.
struct Checked<R> {
    inner: R,
    hasher: Option<ring::digest::Context>,
    left: u64,
    digest: Digest,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Checked<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        if let Some(h) = this.hasher.as_mut() {
            h.update(new);
        }
        this.left = this.left.saturating_sub(new.len() as u64);
        if this.left == 0
            && let Some(h) = this.hasher.take()
            && h.finish().as_ref() != this.digest.0.as_slice()
        {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the stored copy of {} is damaged: its bytes no longer hash to its name",
                    this.digest
                ),
            )));
        }
        std::task::Poll::Ready(Ok(()))
    }
}

/// Reads a stored blob from `offset`: its own file, or, for a small blob in a
/// pack, its bytes read whole and checked. With `check`, a whole file read
/// from the start is checked against its digest as it is read (see
/// [`Checked`]); one read from an offset is not (its reader checks the whole:
/// the CLI does). The link does not check: its receiver does, and refuses.
pub(crate) async fn blob_reader(
    state: &Arc<NodeState>,
    digest: Digest,
    offset: u64,
    check: bool,
) -> Result<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>, NodeError> {
    if state.blobs.is_packed(&digest) {
        let st = state.clone();
        let data = tokio::task::spawn_blocking(move || st.blobs.read(&digest))
            .await
            .map_err(|e| NodeError::Other(e.to_string()))?
            .map_err(NodeError::from)?;
        let mut c = std::io::Cursor::new(data);
        c.set_position(offset);
        return Ok(Box::pin(c));
    }
    let mut f = tokio::fs::File::from_std(state.blobs.open_blob(&digest).map_err(NodeError::from)?);
    if !check || offset > 0 {
        f.seek(SeekFrom::Start(offset))
            .await
            .map_err(NodeError::io(format!("seek {digest}")))?;
        return Ok(Box::pin(f));
    }
    let len = f
        .metadata()
        .await
        .map_err(NodeError::io(format!("read {digest}")))?
        .len();
    Ok(Box::pin(Checked {
        inner: f,
        hasher: Some(ring::digest::Context::new(&ring::digest::SHA256)),
        left: len,
        digest,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, atomic::Ordering};

    use truc_store::MemoryStore;

    use super::*;
    use crate::state::testing::Fixture;

    /// A stream that gets no chunk ends after `CHUNK_STALL`, although other
    /// links of the node go on receiving: their bytes say nothing of this
    /// peer. (Time is virtual here.)
    #[tokio::test(start_paused = true)]
    async fn a_stalled_stream_ends_although_other_links_receive() {
        let f = Fixture::new();
        let st = f.hub(Arc::new(MemoryStore::new()));
        let (out, mut wants) = mpsc::channel(8);
        let sinks: Sinks = Arc::default();
        let data = b"x".repeat(1000);
        // Another link receiving all along, for ten stall periods.
        let other = tokio::spawn({
            let st = st.clone();
            async move {
                for _ in 0..40 {
                    tokio::time::sleep(CHUNK_STALL / 4).await;
                    st.stats
                        .stream_bytes_received
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        let started = tokio::time::Instant::now();
        let r = fetch(&st, &out, &sinks, 1, 0, Digest::of(&data), 1000).await;
        other.abort();
        let Err(Fetch::Failed(e)) = r else {
            panic!("the stalled stream did not fail");
        };
        assert!(e.to_string().contains("no chunk"), "{e}");
        assert!(
            started.elapsed() < CHUNK_STALL * 2,
            "failed only after {:?}",
            started.elapsed()
        );
        assert!(wants.try_recv().is_ok(), "it asked for the bytes");
    }
}
