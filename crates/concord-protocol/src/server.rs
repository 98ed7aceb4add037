//! Messages the server sends to a client.

use serde::{Deserialize, Serialize};

use crate::activity::{ActivityChange, ActivityId, Participant};
use crate::error::{ErrorCode, ErrorReply};
use crate::history::{HistoryInfo, HistoryPage};
use crate::identity::Identity;
use crate::ids::{ModelId, RequestId, SessionId, Timestamp, UserId};
use crate::payload::{
    Author, Collaborator, Commit, CommittedOperation, HandshakeRejection, OfflineUpdate,
    OpenedModel, PermissionGrants, Permissions, ReferenceChange, ReferenceKey, Session,
    SharedReference,
};
use crate::presence::UserPresence;
use crate::query::QueryPage;

/// One frame from the server to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// A request; the client answers with a [`ClientMessage::Response`] or
    /// [`ClientMessage::Error`] carrying the same id.
    ///
    /// [`ClientMessage::Response`]: crate::ClientMessage::Response
    /// [`ClientMessage::Error`]: crate::ClientMessage::Error
    Request { id: RequestId, request: ServerRequest },
    /// The answer to the client's request `to`.
    Response { to: RequestId, response: ServerResponse },
    /// The client's request `to` failed; `to` is `None` for a failure that concerns no
    /// request (a client frame the server could not decode).
    Error { to: Option<RequestId>, error: ErrorReply },
    /// A message the client did not ask for.
    Push(ServerPush),
}

/// What the server asks of a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerRequest {
    /// The model the client asked to open with `auto_create` does not exist: the client
    /// answers with its initial content (`AutoCreate`), or with an error to give up, which
    /// fails the open with `model_not_found`.
    AutoCreate { model: ModelId },
    /// → `Pong`.
    Ping,
}

/// The server's answer to a client request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerResponse {
    /// Answers `Handshake`.
    Handshake(HandshakeResult),
    /// Answers `OpenModel`.
    ModelOpened(OpenedModel),
    /// Answers `CreateModel`, also when this `(model, nonce)` was created before.
    ModelCreated { model: ModelId, version: u64, created_at: Timestamp },
    /// Answers `Resync`: the model's current version (the replay ends there) and whether
    /// the in-flight submission was committed (`None`: not committed, or none was named).
    ResyncStarted {
        model: ModelId,
        current_version: u64,
        in_flight_committed: Option<Commit>,
        permissions: Permissions,
        /// When the server created the model: a client that created it offline (`Sync`)
        /// learns the server's time here, as `ModelCreated` tells it otherwise.
        created_at: Timestamp,
    },
    /// Answers `ResyncComplete`; the lists are empty when the client did not keep the model
    /// open.
    ResyncCompleted {
        model: ModelId,
        collaborators: Vec<Collaborator>,
        references: Vec<SharedReference>,
    },
    /// Answers `GetPermissions`.
    Permissions { model: ModelId, grants: PermissionGrants },
    /// Answers `Ping`.
    Pong,
    /// Answers requests that return nothing: `CloseModel`, `DeleteModel`,
    /// `SubscribeOffline`, `SetPermissions`, and presence changes.
    Done,
    /// Answers `Presence(Subscribe)`: the followed users' current presence.
    Presence(Vec<UserPresence>),
    /// Answers `Activity(Join)`: everyone in the activity, this session included.
    ActivityJoined { activity: ActivityId, participants: Vec<Participant> },
    /// Answers `HistoryOpen`.
    HistoryOpened(HistoryInfo),
    /// Answers `HistoryFetch`.
    HistoryPage(HistoryPage),
    /// Answers `Query`.
    QueryResult(QueryPage),
    /// Answers `Identity`: the users found, by id.
    Identities(Vec<Identity>),
}

/// The outcome of a handshake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakeResult {
    Accepted(Session),
    Rejected(HandshakeRejection),
}

/// Messages the server sends unasked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerPush {
    /// The submission `(model, seq)` was committed as `version`.
    Ack { model: ModelId, seq: u64, version: u64, timestamp: Timestamp },
    /// The submission `(model, seq)` was refused and will never be committed.
    SubmitRejected { model: ModelId, seq: u64, error: ErrorReply },
    /// Another session's operation, committed on a model this client has open.
    RemoteOperation { model: ModelId, operation: CommittedOperation },
    /// Operations missed while disconnected, after a `Resync`; the page with `last` ends
    /// the replay (at the `current_version` of `ResyncStarted`). Later operations arrive as
    /// `RemoteOperation`s. `authors` names the user of each session that authored
    /// `operations`, where the server knows it (operations stored before the server kept
    /// their users have none).
    ResyncPage {
        model: ModelId,
        operations: Vec<CommittedOperation>,
        authors: Vec<Author>,
        last: bool,
    },
    /// Catch-up and live updates of a model in the offline subscription set.
    OfflineUpdate { model: ModelId, update: OfflineUpdate },
    /// This session's permissions on an open or subscribed model changed.
    PermissionsChanged { model: ModelId, permissions: Permissions },
    /// Another session opened a model this client has open.
    CollaboratorOpened { model: ModelId, collaborator: Collaborator },
    /// Another session closed (or lost) a model this client has open.
    CollaboratorClosed { model: ModelId, session: SessionId, user: UserId },
    /// Another session changed one of its references.
    RemoteReference { model: ModelId, session: SessionId, change: ReferenceChange },
    /// The server closed the model on this connection (deleted, permission revoked, an
    /// operation could not be applied); the client must reopen or resync it.
    ModelForceClosed { model: ModelId, code: ErrorCode, message: String },
    /// The server is about to close the connection (shutdown, session revoked).
    SessionClosing { code: ErrorCode, message: String },
    /// A followed user's presence changed (availability or state): the whole of it.
    Presence(UserPresence),
    /// Something happened in an activity this session is in (never its own doing).
    Activity { activity: ActivityId, change: ActivityChange },
    /// The server refused this session's change to its reference `reference` (invalid, or
    /// set at a version too old to move forward) and changed nothing.
    ReferenceRefused { model: ModelId, reference: ReferenceKey, error: ErrorReply },
}
