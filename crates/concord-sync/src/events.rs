//! What an application hears, defined once: events about one model ([`ModelEvent`]) and
//! about the domain as a whole ([`DomainEvent`]). The engine emits them as [`Event`]s; the
//! clients pass them on as they are.
//!
//! None of these enums is `#[non_exhaustive]`, on purpose: a new event breaks every
//! exhaustive `match` on them, so each consumer — the JavaScript binding above all — must
//! decide what to do with it before it compiles again.

use concord_ot::{Applied, DiscreteOperation, ElementId, Operation, OperationKind, ReferenceValue};
use concord_protocol::{
    ActivityChange, ActivityId, Collaborator, ErrorReply, HandshakeRejection, ModelId, Permissions,
    ReferenceKey, SessionId, UserId, UserPresence,
};

use crate::replica::PendingOperation;

/// What the engine reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Something happened to one model.
    Model { model: ModelId, event: ModelEvent },
    /// Something happened to the domain: the connection, or a model as a whole (created,
    /// deleted, opened, downloaded…).
    Domain(DomainEvent),
    /// A followed user's presence changed (availability or state): the whole of it.
    Presence(UserPresence),
    /// Something happened in an activity this client joined (someone joined, left or
    /// changed their state; `Left` with this client's own session: it was removed).
    Activity { activity: ActivityId, change: ActivityChange },
}

/// What happens to one model.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelEvent {
    /// An element changed: by this client (`author: None`) or by another session, whose
    /// user is `user` when the engine knows it (the session has the model open, or had
    /// when it was last listed). One per discrete operation that changed something.
    Changed {
        element: ElementId,
        operation: OperationKind,
        author: Option<SessionId>,
        user: Option<UserId>,
    },
    /// The model had no unacknowledged local changes and now has one.
    Modified,
    /// Every local change is acknowledged.
    Committed,
    /// Local changes up to `seq` are durable in the offline store.
    Stored { seq: u64 },
    /// The server committed local changes up to `seq`, as model version `version`.
    Acknowledged { seq: u64, version: u64 },
    /// Concurrent changes made these local changes (by seq) no-ops: they were overridden (a
    /// concurrent set won, or their target was removed).
    Neutralised { seqs: Vec<u64> },
    /// The server refused these local changes for good; they were undone here.
    Rejected { operations: Vec<PendingOperation>, error: ErrorReply },
    /// The model is catching up with what the server committed while it was offline.
    ResyncStarted,
    /// The model is live again: missed operations applied, local changes being sent.
    ResyncCompleted,
    /// The connection is up; the model resyncs.
    Online,
    /// The connection is down; the model keeps working offline.
    Offline,
    /// Another session opened the model.
    CollaboratorOpened(Collaborator),
    /// Another session closed the model (or lost its connection), or this client stopped
    /// hearing of it (offline).
    CollaboratorClosed { session: SessionId, user: UserId },
    /// This session's permissions on the model changed (a user with `manage` changed its
    /// grants). Losing `read` is reported as [`ModelEvent::Gone`] instead.
    PermissionsChanged { permissions: Permissions },
    /// Another session shared, set, cleared or unshared one of its references (or the
    /// connection's end took it away). A set value is as it applies to the local view when
    /// the event is made; it moves with later changes (read it again with the engine's
    /// `reference`).
    RemoteReference {
        session: SessionId,
        /// The session's user, when the engine knows it.
        user: Option<UserId>,
        reference: ReferenceKey,
        change: RemoteReferenceChange,
    },
    /// The server refused this client's change to its reference `reference` (invalid at
    /// the server, or set at a version too old to move forward); the server's copy of it
    /// is unchanged.
    ReferenceRefused { reference: ReferenceKey, error: ErrorReply },
    /// The server no longer serves the model (deleted by someone else, or closed by the
    /// server); the local copy stays, offline.
    Gone { error: ErrorReply },
    /// Loaded only to sync its stored changes in the background, the model is in sync and
    /// left memory; its batches still queued must be durable before it is loaded again.
    Released,
}

/// What became of another session's reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteReferenceChange {
    Shared,
    Set(ReferenceValue),
    /// Shared without a value (cleared by its owner, or its element was removed).
    Cleared,
    Unshared,
}

/// What happens to the domain as a whole.
#[derive(Debug, Clone, PartialEq)]
pub enum DomainEvent {
    /// The connection changed state.
    State(ConnectionState),
    /// Background sync of stored models after a reconnection: of `total` models, `done`
    /// are in sync with the server (every stored change acknowledged) and `failed` stopped
    /// for a reason reported with their own event (`CreationRefused`, `ModelGone`,
    /// `ServerFault` until it is tried again, `ProtocolViolation`, or a model the store could
    /// not load); the rest are still on their way (a model the server asked to retry later
    /// is among them). A model deleted here meanwhile leaves `total`.
    SyncProgress { done: usize, failed: usize, total: usize },
    /// The server created a model created here.
    Created { model: ModelId },
    /// The server refused to create a model created here (its id is taken by another
    /// creation, or the user may not create in the collection). The model and its local
    /// changes stay here and in the store, offline.
    CreationRefused { model: ModelId, error: ErrorReply },
    /// The server confirmed a deletion made here; the store forgot the model.
    Deleted { model: ModelId },
    /// The server refused a deletion made here: the model is back in the store.
    DeletionRefused { model: ModelId, error: ErrorReply },
    /// The server no longer serves the model (deleted by someone else, closed by the
    /// server, left the subscription set); the local copy stays, offline.
    ModelGone { model: ModelId, error: ErrorReply },
    /// A subscribed model was downloaded into the store for the first time.
    Downloaded { model: ModelId },
    /// A model opened at the server (it was not in the store) arrived: it is stored,
    /// loaded, and syncs like any other.
    Opened { model: ModelId },
    /// Opening a model at the server failed.
    OpenFailed { model: ModelId, failure: OpenFailure },
    /// The server refused local changes of the model for good (they were undone here; the
    /// model's own `Rejected` event lists them).
    ChangesRejected { model: ModelId, error: ErrorReply },
    /// The server failed serving the model (`internal`: its store failed, or holds a
    /// damaged record of it, when loading it or taking a submission). Nothing here is lost:
    /// an application's model stays loaded, offline, and keeps storing its changes. The
    /// model is tried again on this connection after a backoff of its own (from
    /// `initial_backoff`, doubling with each fault in a row up to 30 times `max_backoff`),
    /// and at once on the next connection.
    ServerFault { model: ModelId, error: ErrorReply },
    /// The server broke the protocol for the model. It left memory; the store holds a
    /// consistent state to load it from again.
    ProtocolViolation { model: ModelId, error: String },
    /// The server refused the credentials for good while reconnecting: the domain stays
    /// offline until it is connected again with new ones.
    ConnectionRefused(HandshakeRejection),
    /// The offline store failed and the domain stopped: it is disconnected, waiting
    /// `stored()`/`acknowledged()` calls fail, and later calls return the error; a new domain
    /// on the same store picks up everything stored. The engine never reports this: the
    /// driver, which owns the store, does.
    StorageFailed(String),
}

/// Whether the engine is talking to its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    Disconnected,
    Connecting,
    Connected,
    /// The connection was lost or an attempt failed; the engine tries again after a while.
    Reconnecting,
}

/// Why opening a model at the server failed.
#[derive(Debug, Clone, PartialEq)]
pub enum OpenFailure {
    /// The server refused: no such model (and nothing to create it from), not permitted…
    Refused(ErrorReply),
    /// The connection closed before the answer arrived.
    ConnectionLost,
    /// No answer in time; the connection was dropped.
    TimedOut,
}

impl ModelEvent {
    /// One [`ModelEvent::Changed`] per discrete part of `operation` that changed something
    /// (`applied` says which did; a part without a report counts as changed).
    pub fn changes(
        operation: &Operation,
        applied: &[Applied],
        author: Option<(SessionId, Option<UserId>)>,
    ) -> Vec<ModelEvent> {
        let parts: Vec<&DiscreteOperation> = match operation {
            Operation::Discrete(op) => vec![op],
            Operation::Compound(ops) => ops.iter().collect(),
        };
        let changed = applied
            .iter()
            .map(|a| matches!(a, Applied::Changed { .. }))
            .chain(std::iter::repeat(true));
        parts
            .into_iter()
            .zip(changed)
            .filter(|(op, changed)| *changed && !op.noop)
            .map(|(op, _)| ModelEvent::Changed {
                element: op.target,
                operation: op.kind.clone(),
                author: author.as_ref().map(|(session, _)| session.clone()),
                user: author.as_ref().and_then(|(_, user)| user.clone()),
            })
            .collect()
    }
}
