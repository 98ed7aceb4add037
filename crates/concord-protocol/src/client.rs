//! Messages a client sends to the server.

use concord_ot::{Document, Operation, ReplicaId};
use serde::{Deserialize, Serialize};

use crate::activity::ActivityRequest;
use crate::error::ErrorReply;
use crate::history::HistoryStart;
use crate::identity::IdentityRequest;
use crate::ids::{CollectionId, CreationNonce, ModelId, RequestId};
use crate::payload::{Auth, ClientInfo, InFlight, KnownModel, PermissionGrants, ReferenceChange};
use crate::presence::PresenceRequest;

/// One frame from a client to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// A request; the server answers with a [`ServerMessage::Response`] or
    /// [`ServerMessage::Error`] carrying the same id.
    ///
    /// [`ServerMessage::Response`]: crate::ServerMessage::Response
    /// [`ServerMessage::Error`]: crate::ServerMessage::Error
    Request { id: RequestId, request: ClientRequest },
    /// The answer to the server's request `to`.
    Response { to: RequestId, response: ClientResponse },
    /// The server's request `to` failed; `to` is `None` for a failure that concerns no
    /// request (a server frame the client could not decode).
    Error { to: Option<RequestId>, error: ErrorReply },
    /// A one-way message; anything that comes back is correlated by its content.
    Notice(ClientNotice),
}

/// What a client asks of the server. The expected response is named on each variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// The first message of every connection. → `Handshake` (accepted or rejected).
    Handshake {
        /// The protocol version the client speaks; equal to the frame's version byte.
        protocol_version: u8,
        client: ClientInfo,
        auth: Auth,
    },
    /// Opens a model for live editing. When it does not exist and `auto_create` is set, the
    /// server first asks for its initial content with [`ServerRequest::AutoCreate`].
    /// → `ModelOpened`.
    ///
    /// [`ServerRequest::AutoCreate`]: crate::ServerRequest::AutoCreate
    OpenModel { model: ModelId, auto_create: bool },
    /// → `Done`.
    CloseModel { model: ModelId },
    /// Creates a model; idempotent by `(model, nonce)`. → `ModelCreated`, or the error
    /// `model_already_exists` when another creation owns the id.
    CreateModel {
        model: ModelId,
        collection: CollectionId,
        data: Document,
        nonce: CreationNonce,
        /// `None` keeps the collection's defaults.
        permissions: Option<PermissionGrants>,
    },
    /// → `Done`. With `creation`, the nonce of the client's own creation of the model that
    /// the server has not confirmed to it: only a model that creation made is deleted, and
    /// any other is answered as absent, so that a client deleting its own unconfirmed model
    /// never deletes one another client created under the same id.
    DeleteModel { model: ModelId, creation: Option<CreationNonce> },
    /// Reattaches a model after a reconnection: the server reports whether the in-flight
    /// submission was committed, then pushes `ResyncPage`s of the operations after
    /// `known_version`. → `ResyncStarted`.
    Resync { model: ModelId, known_version: u64, in_flight: Option<InFlight> },
    /// Pushes a model's stored changes in one request, without keeping it open: creates
    /// the model first when `create` is given (idempotent by its nonce, as `CreateModel`),
    /// attaches and resyncs it from `known_version` (as `Resync`), takes `submission` (as a
    /// `Submit` notice), and then closes it on this connection — once the submission is
    /// answered, or right after the replay when there is none. The model must not be open
    /// on the connection already, and counts against the open-model limit until closed.
    /// → `ResyncStarted` (then the `ResyncPage`s, then the submission's `Ack` or
    /// `SubmitRejected`); a failed creation or resync is the one `Error`, and nothing of
    /// the rest happens.
    Sync {
        model: ModelId,
        // Boxed (the wire format is the same) so that every message stays small.
        create: Option<Box<NewModel>>,
        known_version: u64,
        in_flight: Option<InFlight>,
        submission: Option<Box<SyncSubmission>>,
    },
    /// The client applied the replay and re-sent its in-flight submission; `open` says
    /// whether it keeps the model open (false when it only synced pending changes).
    /// → `ResyncCompleted`.
    ResyncComplete { model: ModelId, open: bool },
    /// Changes the offline subscription set: with `replace`, the set becomes `subscribe`
    /// (sent after every handshake); otherwise `subscribe` is added and `unsubscribe`
    /// removed. The server answers, then catches up each newly subscribed model with
    /// `OfflineUpdate` pushes and keeps pushing while connected. → `Done`.
    SubscribeOffline { subscribe: Vec<KnownModel>, unsubscribe: Vec<ModelId>, replace: bool },
    /// Needs `manage`. → `Permissions`.
    GetPermissions { model: ModelId },
    /// Needs `manage`. → `Done`; sessions whose permissions change get `PermissionsChanged`.
    SetPermissions { model: ModelId, grants: PermissionGrants },
    /// → `Pong`.
    Ping,
    /// Presence: the user's state and who the session follows. → per variant.
    Presence(PresenceRequest),
    /// Activities: join, leave, this session's state in them. → per variant.
    Activity(ActivityRequest),
    /// Needs `read`. → `HistoryOpened`: the versions the model's history spans.
    HistoryOpen { model: ModelId },
    /// Needs `read`. → `HistoryPage`: the operations after `start` (after the latest
    /// checkpoint at or before it, with that checkpoint, when `checkpoint` is set), at most
    /// `max_operations` and about `max_bytes` of them (the server may lower both; a page has
    /// at least one operation unless the history ends there).
    HistoryFetch {
        model: ModelId,
        start: HistoryStart,
        checkpoint: bool,
        max_operations: u32,
        max_bytes: u32,
    },
    /// A query over one collection (`SELECT … FROM collection …`, see `docs/queries.md`);
    /// only models the session's user may read are selected or counted. → `QueryResult`;
    /// `invalid_query` (with `line` and `column` details when known) for a malformed query,
    /// `query_scan_limit` for one that would examine too many models.
    Query { query: String },
    /// Identities: users' display names and emails by id or name prefix. → `Identities`.
    Identity(IdentityRequest),
}

/// A client's answer to a server request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// Answers `AutoCreate`: the content of the model the client asked to open.
    AutoCreate { collection: CollectionId, data: Document, permissions: Option<PermissionGrants> },
    /// Answers `Ping`.
    Pong,
}

/// A model to create, as `CreateModel` carries it (inside a [`ClientRequest::Sync`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewModel {
    pub collection: CollectionId,
    pub data: Document,
    pub nonce: CreationNonce,
    /// `None` keeps the collection's defaults.
    pub permissions: Option<PermissionGrants>,
}

/// A batch of local changes, as a `Submit` notice carries it (inside a
/// [`ClientRequest::Sync`]); the same rules apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyncSubmission {
    pub replica: ReplicaId,
    pub first_seq: u64,
    pub seq: u64,
    pub base_version: u64,
    pub operation: Operation,
}

/// One-way messages from a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientNotice {
    /// Submits a batch of local changes to an open (or resyncing) model. At most one
    /// submission per model is in flight. The server answers with `Ack` or `SubmitRejected`
    /// for the same `(model, seq)`; a resubmission of a decided `(replica, seq)` gets the
    /// original answer (the ack, or the refusal with its code) and is not applied twice.
    ///
    /// The batch covers the replica's local seqs `first_seq..=seq` on this model, with no
    /// gap after the last one the server decided: `first_seq` is that one plus 1 (1 for the
    /// replica's first submission to the model), or the submission is refused with
    /// `seq_out_of_order`.
    Submit {
        model: ModelId,
        replica: ReplicaId,
        /// The first local seq the batch covers.
        first_seq: u64,
        /// The last local seq the batch covers: its idempotence key with `replica`.
        seq: u64,
        /// The model version the operation was made against.
        base_version: u64,
        operation: Operation,
    },
    /// Shares, sets, clears or unshares one of this session's references on an open model.
    Reference { model: ModelId, change: ReferenceChange },
}
