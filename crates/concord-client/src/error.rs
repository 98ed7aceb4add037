//! What can go wrong for an application using the client.

use concord_ot::ApplyError;
use concord_protocol::{ErrorReply, HandshakeRejection, ModelId};
use concord_storage::StorageError;
use concord_sync::EngineError;
use concord_sync::history::HistoryError;

#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Neither `connect_*` nor `initialize_offline` was called.
    #[error("the domain has no user yet: connect or initialize offline first")]
    NotInitialized,
    /// The domain works for another user; a store is per (server, user).
    #[error("the domain is initialized for user {current}, not {requested}")]
    OtherUser { current: String, requested: String },
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("the server refused the credentials: {0:?}")]
    Rejected(HandshakeRejection),
    /// The model is not in the offline store and the domain is not connected.
    #[error("model {0} was never downloaded and the domain is offline")]
    NotAvailableOffline(ModelId),
    #[error("model {0} is not open")]
    NotOpen(ModelId),
    #[error("the server answered with an error: {0}")]
    Server(ErrorReply),
    #[error("no answer from the server in time")]
    Timeout,
    #[error("the element is a {found}, not a {expected}")]
    WrongKind { expected: &'static str, found: String },
    #[error("the element no longer exists")]
    NoSuchElement,
    #[error("the value cannot be stored: {0}")]
    InvalidValue(String),
    #[error("the change does not apply: {0}")]
    Invalid(#[from] ApplyError),
    #[error("the offline store failed: {0}")]
    Storage(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// A historical model cannot move there, or the server's history did not fit.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The domain was dropped or its store failed; nothing more can be done with it.
    #[error("the domain is closed")]
    Closed,
}

impl From<StorageError> for ClientError {
    fn from(error: StorageError) -> ClientError {
        ClientError::Storage(error.to_string())
    }
}
