//! What can go wrong for an application using the client.

use concord_ot::ApplyError;
use concord_protocol::{ActivityId, ErrorReply, HandshakeRejection, ModelId};
use concord_storage::StorageError;
use concord_sync::history::HistoryError;
use concord_sync::{CallError, EngineError};

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
    /// The request needs the server and the domain is not connected; it was not queued
    /// (permission changes, presence and activities never are).
    #[error("the domain is offline; the request was not sent")]
    Offline,
    /// The connection ended before the server answered; whether it carried the request out
    /// is unknown.
    #[error("the connection was lost before the server answered")]
    ConnectionLost,
    /// This domain has not joined the activity (or was removed from it).
    #[error("activity {} {} is not joined", .0.kind, .0.id)]
    NotJoined(ActivityId),
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
    /// A query that does not parse (or that the language does not have), with its position.
    #[error("the query is malformed: {0}")]
    Query(concord_query::QueryError),
    #[error("the domain is closed")]
    Closed,
}

impl From<StorageError> for ClientError {
    fn from(error: StorageError) -> ClientError {
        ClientError::Storage(error.to_string())
    }
}

impl From<CallError> for ClientError {
    fn from(error: CallError) -> ClientError {
        match error {
            CallError::Offline => ClientError::Offline,
            CallError::ConnectionLost => ClientError::ConnectionLost,
            CallError::Refused(reply) => ClientError::Server(reply),
        }
    }
}
