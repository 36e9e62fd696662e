//! Errors of the runtime and the one place they map to gRPC codes.

use tonic::{Code, Status};
use truc_store::{BlobError, StoreError};

/// A message refused for good: resending the same bytes will be refused again.
/// Carried back to the sender as a `Reject` frame or a gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct Refusal {
    pub code: Code,
    pub reason: String,
}

impl Refusal {
    pub fn new(code: Code, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
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
    pub fn exhausted(reason: impl Into<String>) -> Self {
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
}

impl NodeError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeError {
        let what = what.into();
        move |source| NodeError::Io { what, source }
    }
}

/// The single mapping from runtime errors to gRPC statuses.
pub fn to_status(e: NodeError) -> Status {
    match e {
        NodeError::Refused(r) => Status::new(r.code, r.reason),
        NodeError::Deferred(reason) => Status::resource_exhausted(reason),
        NodeError::Blob(b) if b.is_disk_full() => {
            Status::resource_exhausted(format!("disk full: {b}"))
        }
        NodeError::Store(StoreError::Failed(m)) => {
            Status::unavailable(format!("store unavailable: {m}"))
        }
        NodeError::Store(StoreError::Corrupt { .. }) => Status::data_loss(e.to_string()),
        other => Status::internal(other.to_string()),
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Self {
        to_status(e)
    }
}
