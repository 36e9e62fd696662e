//! Errors of the runtime and the one place they map to gRPC codes.

use tonic::{Code, Status};
use truc_store::{BlobError, StoreError};

/// A message refused: resending the same bytes will be refused again, unless
/// `retry` (a quota or a full outbox: waiting helps). Carried back to the
/// sender as a `Reject` frame or a gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    pub code: Code,
    pub reason: String,
    pub retry: bool,
}

impl Refusal {
    pub fn new(code: Code, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
            retry: false,
        }
    }
    pub fn invalid(reason: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, reason)
    }
    pub fn denied(reason: impl Into<String>) -> Self {
        Self::new(Code::PermissionDenied, reason)
    }
    pub fn unauthenticated(reason: impl Into<String>) -> Self {
        Self::new(Code::Unauthenticated, reason)
    }
    pub fn not_found(reason: impl Into<String>) -> Self {
        Self::new(Code::NotFound, reason)
    }
    /// A quota or a queue is full for now: the same request later may pass.
    pub fn exhausted(reason: impl Into<String>) -> Self {
        Self {
            retry: true,
            ..Self::new(Code::ResourceExhausted, reason)
        }
    }
    /// Cannot be decided here now for a reason of this node's own (a stale
    /// revocation list, its clock): the sender keeps the message and retries.
    pub fn not_now(reason: impl Into<String>) -> Self {
        Self {
            retry: true,
            ..Self::new(Code::Unavailable, reason)
        }
    }
    /// The request itself is over a limit (`limits.*`): the same request will
    /// never pass. The same code as a quota, without a retry hint.
    pub fn over_limit(reason: impl Into<String>) -> Self {
        Self::new(Code::ResourceExhausted, reason)
    }

    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self.code {
            Code::InvalidArgument => "invalid",
            Code::PermissionDenied => "denied",
            Code::Unauthenticated => "bad_signature",
            Code::NotFound => "unknown_recipient",
            Code::AlreadyExists => "conflict",
            Code::ResourceExhausted => "limit",
            _ => "other",
        }
    }
}

/// Everything that can stop a request or a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Pki(#[from] truc_pki::PkiError),
    #[error("io on {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// Not taken now: a quota is full; the sender keeps the message and retries.
    #[error("deferred: {0}")]
    Deferred(String),
    #[error("{0}")]
    Other(String),
    /// One failure shared by every request of a batch that failed as a whole:
    /// the status it maps to, so that each request answers with the code and
    /// text a lone request would have (a full disk stays RESOURCE_EXHAUSTED).
    #[error("{}", .0.message())]
    Shared(Status),
    /// A walk of many writes stopped at `error` after `done` (what the writes
    /// before it did: they stay), and what else the walk has to tell (`also`,
    /// "; ..." or empty).
    #[error("{error} ({done} before it{also})")]
    Partly {
        error: Box<NodeError>,
        done: String,
        also: String,
    },
}

impl NodeError {
    /// This error for each of `n` requests that failed together: a store error
    /// stays one (callers look at it), anything else becomes the status it maps
    /// to, so that every request answers with the code and text a lone one would.
    pub fn for_each(self, n: usize) -> Vec<NodeError> {
        match self {
            NodeError::Store(s) => (0..n).map(|_| NodeError::Store(s.clone())).collect(),
            other => {
                let status = to_status(other);
                (0..n).map(|_| NodeError::Shared(status.clone())).collect()
            }
        }
    }
    /// An error that trying again later may not meet: a disk or store that
    /// failed a read now (a full descriptor table, an I/O retry, a
    /// database connection), as against a record that is gone or corrupt.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            NodeError::Io { .. }
                | NodeError::Store(
                    StoreError::Io(_)
                        | StoreError::Failed(_)
                        | StoreError::Injected(_)
                        | StoreError::Stalled(_)
                )
                | NodeError::Blob(truc_store::BlobError::Io { .. })
        )
    }

    /// This error as the answer to a walk of many writes that stopped at
    /// it, after writes that did `done`.
    pub fn after_done(self, done: String) -> NodeError {
        NodeError::Partly {
            error: Box::new(self),
            done,
            also: String::new(),
        }
    }

    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
        let what = what.into();
        move |source| NodeError::Io { what, source }
    }
}

/// Metadata on a status that waiting may clear: when to try again.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// The hint when the caller does not give the node's own (`quotas.retry_after_ms`).
const DEFAULT_RETRY_AFTER_MS: u32 = 1000;

/// Marks `s` as worth retrying after `ms`.
pub fn retry_after(mut s: Status, ms: u32) -> Status {
    if let Ok(v) = ms.to_string().parse() {
        s.metadata_mut().insert(RETRY_AFTER_MS, v);
    }
    s
}

/// The single mapping from runtime errors to gRPC statuses. What waiting may
/// clear (a quota, a full disk) carries a retry hint; a request over a limit
/// does not.
pub fn to_status(e: NodeError) -> Status {
    match e {
        NodeError::Refused(r) if r.retry => {
            retry_after(Status::new(r.code, r.reason), DEFAULT_RETRY_AFTER_MS)
        }
        NodeError::Refused(r) => Status::new(r.code, r.reason),
        NodeError::Deferred(reason) => {
            retry_after(Status::resource_exhausted(reason), DEFAULT_RETRY_AFTER_MS)
        }
        NodeError::Blob(b) if b.is_disk_full() => retry_after(
            Status::resource_exhausted(format!("disk full: {b}")),
            DEFAULT_RETRY_AFTER_MS,
        ),
        NodeError::Store(StoreError::Failed(m)) => {
            Status::unavailable(format!("store unavailable: {m}"))
        }
        NodeError::Store(StoreError::Stalled(_)) => {
            retry_after(Status::unavailable(e.to_string()), DEFAULT_RETRY_AFTER_MS)
        }
        NodeError::Store(StoreError::Corrupt { .. }) => Status::data_loss(e.to_string()),
        NodeError::Shared(s) => s,
        NodeError::Partly { error, done, also } => reworded(to_status(*error), |m| {
            format!("{m} ({done} before it{also})")
        }),
        other => Status::internal(other.to_string()),
    }
}

/// `s` with its message reworded, its code and metadata (a retry hint) kept.
pub fn reworded(s: Status, f: impl FnOnce(&str) -> String) -> Status {
    Status::with_metadata(s.code(), f(s.message()), s.metadata().clone())
}

/// Runs store work off the async threads; its error as the API answers it.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, NodeError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::from)
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        to_status(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What waiting may clear carries a retry hint; a request over a limit,
    /// which will never pass, does not (REST then answers 413, not 429).
    #[test]
    fn only_what_waiting_may_clear_carries_a_retry_hint() {
        let hint = |e: NodeError| {
            let s = to_status(e);
            assert_eq!(s.code(), Code::ResourceExhausted);
            s.metadata().contains_key(RETRY_AFTER_MS)
        };
        assert!(hint(
            Refusal::exhausted("outbox full (quotas.max_outbox)").into()
        ));
        assert!(hint(NodeError::Deferred("queue full".into())));
        assert!(hint(NodeError::Blob(BlobError::Io {
            path: "/data/blobs".into(),
            source: std::io::Error::from_raw_os_error(28),
        })));
        assert!(!hint(
            Refusal::over_limit("over the limit (limits.max_attachment_bytes)").into()
        ));
    }

    /// A batch of concurrent sends that fails on a full disk answers every one
    /// of them "disk full" (RESOURCE_EXHAUSTED, retry later), not an internal
    /// error; a store failure stays a store failure.
    #[test]
    fn every_request_of_a_failed_batch_gets_the_status_a_lone_one_would() {
        let full = || {
            NodeError::Blob(BlobError::Io {
                path: "/var/lib/truc/blobs/packs/00000001.pack".into(),
                source: std::io::Error::from_raw_os_error(28),
            })
        };
        let alone = to_status(full());
        let shared = full().for_each(3);
        assert_eq!(shared.len(), 3);
        for e in shared {
            let s = to_status(e);
            assert_eq!(s.code(), Code::ResourceExhausted);
            assert_eq!((s.code(), s.message()), (alone.code(), alone.message()));
            assert!(s.message().contains("disk full"), "{}", s.message());
        }
        let failed = NodeError::Store(StoreError::Failed("flush: I/O error".into())).for_each(2);
        assert!(
            failed
                .iter()
                .all(|e| matches!(e, NodeError::Store(StoreError::Failed(_))))
        );
        assert!(
            failed
                .into_iter()
                .all(|e| to_status(e).code() == Code::Unavailable)
        );
    }
}
