//! The server's decisions, sans-IO: a [`SessionHost`] per connection and a [`ModelHost`]
//! per loaded model. The server's async shell and the seeded simulation drive the same
//! hosts, so every server behaviour the simulation checks is the server's own.
//!
//! A session host turns a connection's decoded messages into replies (which depend on
//! nothing stored) and requests for model hosts. A model host owns one model's
//! [`Sequencer`](crate::Sequencer), the sessions that have it open or subscribed, its
//! permissions and its shared references; for each request it queues a [`Job`] — store
//! [`Write`]s, then the [`Delivery`]s that may only leave once those writes are durable —
//! and [`Notice`]s for session hosts. When it needs something from the store it cannot
//! hold (old history, a collection's settings) it asks with a [`Read`] and waits.
//!
//! A [`PresenceHost`] per domain holds presence: who is available, what each user
//! publishes, who follows whom; an [`ActivityHost`] per domain holds who is in which
//! activity with what state; an [`IdentityHost`] per domain holds users' names and emails
//! from their tokens. Session hosts hand them their requests; all three live in memory only.
//!
//! The caller passes the time in and carries out the rest: it makes the jobs durable in
//! order (it may merge them into one transaction, across models), delivers their messages
//! only then, answers reads from durable state, and routes notices to sessions.

mod activity;
mod history;
mod identity;
mod model;
mod permissions;
mod presence;
mod query;
mod session;

use std::collections::BTreeMap;

use concord_ot::{Document, Operation, ReplicaId};

use crate::sequencer::page_len;
use concord_protocol::{
    Author, CollectionId, CommittedOperation, CreationNonce, ErrorCode, HistoryOperation, Identity,
    InFlight, ModelId, ModelSnapshot, NewModel, PermissionGrants, Permissions, ReferenceChange,
    RequestId, ServerMessage, ServerPush, SessionId, SyncSubmission, Timestamp, User, UserId,
};
use serde::{Deserialize, Serialize};

use crate::sequencer::{CommitRecord, Decision, RefusalRecord};

pub use activity::{ActivityConfig, ActivityHost, ActivityPermissions, ActivityPolicy};
pub use history::{
    HistoryQuery, HistoryRead, HistorySource, MAX_HISTORY_PAGE_BYTES, MAX_HISTORY_PAGE_OPERATIONS,
    history_reply,
};
pub use identity::{IdentityHost, IdentityLimits};
pub use model::{LoadError, MAX_REFERENCE_CATCH_UP, ModelHost};
pub use permissions::{effective, may_create};
pub use presence::{Broadcast, PresenceHost, PresenceLimits};
pub use query::{
    QueryEntry, QueryLimits, QueryModelData, QueryRead, QuerySource, invalid_query, query_reply,
    wire_row,
};
pub use session::{SessionHost, SessionLimits, SessionOutput, reference_bytes};

/// Connections are told apart by a number the caller makes unique within a server's run and
/// increasing in the order connections are accepted (a client's newest connection has its
/// highest id).
pub type ConnId = u64;

/// An authenticated session on one connection, as the hosts see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRef {
    pub conn: ConnId,
    pub session: SessionId,
    pub user: User,
}

/// What the model hosts of one server share.
#[derive(Debug, Clone, PartialEq)]
pub struct HostConfig {
    /// Collections configured with the server; they take precedence over stored ones.
    pub collections: BTreeMap<CollectionId, CollectionConfig>,
    /// Whether creating a model in an unknown collection creates the collection (with
    /// [`CollectionConfig::default`]) instead of failing.
    pub auto_create_collections: bool,
    /// Committed operations each model keeps in memory for transforms and resyncs; older
    /// ones are read from the store.
    pub history_in_memory: usize,
    /// A snapshot is written every this many operations, so loading replays at most this
    /// many.
    pub snapshot_every: u64,
    /// Operations per `ResyncPage` and per catch-up.
    pub page: usize,
    /// The most a model's encoded data may take: a submission that would grow it past this
    /// (or a creation with more) is refused with `model_too_large`. Keep it well under the
    /// largest message a client accepts, so that any model can still be opened.
    pub max_model_bytes: u64,
    /// The paths indexed in each collection: a store keeps, per path, every model's value
    /// there in query order, so that queries on them read a range instead of the collection.
    pub indexes: BTreeMap<CollectionId, Vec<concord_query::Path>>,
}

/// The default [`HostConfig::max_model_bytes`]: 16 MiB. A snapshot message carries the whole
/// model, so it must stay well under what a server may hold for one connection (64 MiB by
/// default) and under the protocol's message limit (256 MiB).
pub const DEFAULT_MAX_MODEL_BYTES: u64 = 16 * 1024 * 1024;

impl Default for HostConfig {
    fn default() -> HostConfig {
        HostConfig {
            collections: BTreeMap::new(),
            auto_create_collections: true,
            history_in_memory: 1_000,
            snapshot_every: 1_000,
            page: 256,
            max_model_bytes: DEFAULT_MAX_MODEL_BYTES,
            indexes: BTreeMap::new(),
        }
    }
}

/// A collection's permission defaults, which models in it inherit unless their own grants
/// override them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionConfig {
    /// What every user may do with the collection's models.
    pub world: Permissions,
    /// Per-user permissions that replace `world` for those users.
    pub users: BTreeMap<UserId, Permissions>,
    /// Whether any authenticated user (anonymous ones included) may create models here.
    pub world_create: bool,
    /// Users who may create models here when `world_create` is off.
    pub creators: Vec<UserId>,
}

impl Default for CollectionConfig {
    /// Open collaboration: everyone may read, write and remove, and create; `manage` only
    /// by grant (a model's creator always gets every permission on it).
    fn default() -> CollectionConfig {
        CollectionConfig {
            world: Permissions { read: true, write: true, remove: true, manage: false },
            users: BTreeMap::new(),
            world_create: true,
            creators: Vec::new(),
        }
    }
}

/// What the server keeps about a model besides its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub collection: CollectionId,
    pub created_at: Timestamp,
    pub nonce: Option<CreationNonce>,
    pub creator: Option<UserId>,
    /// The model's own grants (which may override its collection's).
    pub grants: PermissionGrants,
}

/// A model as stored: enough to rebuild its host.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredModel {
    pub record: ModelRecord,
    /// The stored settings of the model's collection, if the store has them.
    pub collection: Option<CollectionConfig>,
    pub snapshot: ModelSnapshot,
    /// The operations after the snapshot, in order.
    pub operations: Vec<CommittedOperation>,
    /// The last decided `(seq, decision)` of every replica that submitted to the model.
    pub last_decisions: BTreeMap<ReplicaId, (u64, Decision)>,
    /// The user of each session that authored `operations`, where the store has it.
    pub authors: BTreeMap<SessionId, UserId>,
}

/// What loading a model found.
#[derive(Debug, Clone, PartialEq)]
pub enum Loaded {
    Model(Box<StoredModel>),
    /// No such model; `deleted` when one had the id (ids of deleted models are not reused).
    Absent {
        deleted: bool,
    },
}

/// One change the server persists. Every write of a job is made durable before any of the
/// job's deliveries leaves, and jobs are made durable in the order they were queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Write {
    CreateModel {
        model: ModelId,
        record: ModelRecord,
        snapshot: ModelSnapshot,
    },
    /// A committed operation and its replica's new last seq.
    Commit(CommitRecord),
    /// A submission refused for good: its replica's new last seq, and the code.
    Refusal(RefusalRecord),
    /// Replaces the model's snapshot; the operations up to its version may be compacted.
    Snapshot {
        model: ModelId,
        snapshot: ModelSnapshot,
    },
    SetGrants {
        model: ModelId,
        record: ModelRecord,
    },
    /// The model's keys in its collection's indexes (per indexed path, its
    /// [`IndexKey`](concord_query::IndexKey) there), replacing those it had. Written with its
    /// creation and with each commit that changes them, in the same job.
    IndexModel {
        model: ModelId,
        collection: CollectionId,
        keys: Vec<(concord_query::Path, Vec<u8>)>,
    },
    /// Forgets the model (its index keys too) and remembers that its id was used.
    DeleteModel {
        model: ModelId,
        at: Timestamp,
    },
    PutCollection {
        collection: CollectionId,
        config: CollectionConfig,
    },
    PutUser {
        user: User,
    },
    /// A user's display name and email as the identity host knows them after a handshake,
    /// replacing what was stored, and when they were learned: the newest are loaded back
    /// within the identity limits.
    PutIdentity {
        identity: Identity,
        seen: Timestamp,
    },
    /// `replica` belongs to `user` from now on, in the whole domain: nobody else may submit
    /// under it. Written once, at the replica's first use.
    BindReplica {
        replica: ReplicaId,
        user: UserId,
    },
}

/// A message for one or more connections.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub to: Vec<ConnId>,
    pub outgoing: Outgoing,
}

/// What a delivery carries.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Message(ServerMessage),
    /// `ResyncPage`s of the model's operations in `(after, through]`, read from the store a
    /// page at a time ([`replay_page`]) by whoever writes to the connection, so that a long
    /// replay never sits in memory.
    Replay {
        model: ModelId,
        after: u64,
        through: u64,
    },
    /// The answer to a history request, read from the store ([`history_reply`]) by whoever
    /// writes to the connection, once everything queued before is durable.
    History(HistoryRead),
}

/// Store writes, then what may be said once they are durable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Job {
    pub writes: Vec<Write>,
    pub deliveries: Vec<Delivery>,
}

impl Job {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.deliveries.is_empty()
    }
}

/// What a model host tells the session host of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `model` is not (or no longer) open on `conn` as of the session's attachment
    /// `attachment` (an open that failed, a force close, a deletion); the session forgets it
    /// unless it attached the model again since.
    Closed { conn: ConnId, model: ModelId, attachment: u64 },
    /// Moving the session's reference `change` forward needs `operations` stored
    /// operations read: the session host grants them from its budget (sending the change
    /// back with `read_granted`), or refuses the reference. `now` is the model host's time.
    ReferenceRead {
        conn: ConnId,
        model: ModelId,
        change: ReferenceChange,
        operations: u64,
        now: Timestamp,
    },
}

impl Notice {
    /// The connection whose session the notice is for.
    pub fn conn(&self) -> ConnId {
        match self {
            Notice::Closed { conn, .. } | Notice::ReferenceRead { conn, .. } => *conn,
        }
    }
}

/// Something a model host needs from durable state before it goes on; answer with
/// [`ModelHost::handle_read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read {
    /// The model's committed operations in `(after, through]`. Everything queued before must
    /// be durable first, since memory may no longer hold it.
    Operations { after: u64, through: u64 },
    /// A collection's stored settings.
    Collection(CollectionId),
    /// The user `replica` belongs to — and, if it belongs to nobody yet, bind it to
    /// `claimant` first, atomically across the domain (so that two models never bind one
    /// replica to two users). The host makes a binding durable before it commits under it.
    ReplicaOwner { replica: ReplicaId, claimant: UserId },
}

/// The answer to a [`Read`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReadResult {
    /// The operations asked for, each with its user where the store has it.
    Operations(Result<Vec<HistoryOperation>, ReadFailure>),
    Collection(Result<Option<CollectionConfig>, ReadFailure>),
    ReplicaOwner(Result<UserId, ReadFailure>),
}

/// A [`Read`] the store failed, with the store's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ReadFailure {
    /// The store could not be reached (a database restarting, say): the same request may
    /// succeed later, and is answered `unavailable`. Otherwise the store itself failed
    /// (`internal`).
    pub unavailable: bool,
    pub message: String,
}

impl ReadFailure {
    /// A failure of the store itself (or a store that lacks what it should hold).
    pub fn internal(message: impl Into<String>) -> ReadFailure {
        ReadFailure { unavailable: false, message: message.into() }
    }

    /// The code the request that needed the read is refused with.
    pub fn code(&self) -> ErrorCode {
        if self.unavailable { ErrorCode::UNAVAILABLE } else { ErrorCode::INTERNAL }
    }
}

/// What a connection asks of a model.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelRequest {
    /// `auto_create` is the id of the `AutoCreate` request to send if the model is missing.
    Open {
        request: RequestId,
        auto_create: Option<RequestId>,
        attachment: u64,
    },
    /// With `attachment` (an auto-create open), answered with `ModelOpened` instead of
    /// `ModelCreated`.
    Create {
        request: RequestId,
        collection: CollectionId,
        data: Document,
        nonce: Option<CreationNonce>,
        permissions: Option<PermissionGrants>,
        attachment: Option<u64>,
    },
    Resync {
        request: RequestId,
        known_version: u64,
        in_flight: Option<InFlight>,
        attachment: u64,
    },
    ResyncComplete {
        request: RequestId,
    },
    /// A `Sync` request: create (if asked), resync, submit (if asked), close.
    Sync(Box<SyncRequest>),
    /// The client answered an `AutoCreate` with an error: its open `request` fails.
    AutoCreateDeclined {
        request: RequestId,
        message: String,
    },
    Close {
        request: RequestId,
    },
    Submit {
        replica: ReplicaId,
        first_seq: u64,
        seq: u64,
        base_version: u64,
        operation: Operation,
    },
    Subscribe {
        known: Option<u64>,
    },
    Unsubscribe,
    Delete {
        request: RequestId,
        /// Only the model this creation made (`DeleteModel`'s `creation`).
        creation: Option<CreationNonce>,
    },
    GetPermissions {
        request: RequestId,
    },
    SetPermissions {
        request: RequestId,
        grants: PermissionGrants,
    },
    /// `read_granted`: the session host granted the store reads moving it forward needs
    /// (after a [`Notice::ReferenceRead`]); without it the model host asks first.
    Reference {
        change: ReferenceChange,
        read_granted: bool,
    },
    /// Reads the model's history (needs `read`); answered from the store.
    History {
        request: RequestId,
        query: HistoryQuery,
    },
    /// The connection is gone.
    Disconnected,
}

/// A `Sync` request ([`concord_protocol::ClientRequest::Sync`]) as a model host takes it:
/// its steps in order, each only after the one before succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncRequest {
    pub request: RequestId,
    pub create: Option<Box<NewModel>>,
    pub known_version: u64,
    pub in_flight: Option<InFlight>,
    pub submission: Option<Box<SyncSubmission>>,
    /// The session's attachment of the model, which the last step closes.
    pub attachment: u64,
    /// The next step; a session host routes it at [`SyncStep::Create`].
    pub step: SyncStep,
}

/// How far a model host got with a [`SyncRequest`] (it may wait for a store read between
/// steps, and takes the request up again there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncStep {
    Create,
    Resync,
    Submit,
    Close,
}

impl ModelRequest {
    /// The reply owed for this request when the model cannot be served at all (its stored
    /// state does not load), so that no request goes unanswered; `None` for requests that
    /// expect no reply.
    /// The session's attachment of the model this request made, if it made one: failing
    /// the request without a host (a model that could not be loaded or leased) closes it
    /// ([`Notice::Closed`]), as a host refusing it would.
    pub fn attachment(&self) -> Option<u64> {
        match self {
            ModelRequest::Open { attachment, .. } | ModelRequest::Resync { attachment, .. } => {
                Some(*attachment)
            }
            ModelRequest::Create { attachment, .. } => *attachment,
            ModelRequest::Sync(sync) => Some(sync.attachment),
            _ => None,
        }
    }

    pub fn failure(
        &self,
        model: &ModelId,
        error: concord_protocol::ErrorReply,
    ) -> Option<ServerMessage> {
        match self {
            ModelRequest::Open { request, .. }
            | ModelRequest::Create { request, .. }
            | ModelRequest::Resync { request, .. }
            | ModelRequest::ResyncComplete { request }
            | ModelRequest::AutoCreateDeclined { request, .. }
            | ModelRequest::Close { request }
            | ModelRequest::Delete { request, .. }
            | ModelRequest::GetPermissions { request }
            | ModelRequest::SetPermissions { request, .. }
            | ModelRequest::History { request, .. } => {
                Some(ServerMessage::Error { to: Some(*request), error })
            }
            ModelRequest::Sync(sync) => {
                Some(ServerMessage::Error { to: Some(sync.request), error })
            }
            ModelRequest::Submit { seq, .. } => {
                Some(ServerMessage::Push(ServerPush::SubmitRejected {
                    model: model.clone(),
                    seq: *seq,
                    error,
                }))
            }
            ModelRequest::Subscribe { .. }
            | ModelRequest::Unsubscribe
            | ModelRequest::Reference { .. }
            | ModelRequest::Disconnected => None,
        }
    }
}

/// One page of a replay from the store: `operations` are the next ones after the last page
/// (in order). Returns the push to send and, unless it was the last page, the version the
/// next page starts after; `None` operations means the store lacks the history.
pub fn replay_page(
    model: &ModelId,
    mut operations: Vec<HistoryOperation>,
    through: u64,
) -> Option<(ServerPush, Option<u64>)> {
    let keep = page_len(operations.iter().map(|stored| &stored.operation.operation), usize::MAX);
    operations.truncate(keep);
    let last_version = operations.last()?.operation.version;
    let last = last_version >= through;
    let mut authors = BTreeMap::new();
    for stored in &operations {
        if let Some(user) = &stored.user {
            authors.insert(stored.operation.author.clone(), user.clone());
        }
    }
    let operations = operations.into_iter().map(|stored| stored.operation).collect();
    let push = ServerPush::ResyncPage {
        model: model.clone(),
        operations,
        authors: authors_of(authors),
        last,
    };
    Some((push, (!last).then_some(last_version)))
}

/// A page's authors as sent.
pub(crate) fn authors_of(authors: BTreeMap<SessionId, UserId>) -> Vec<Author> {
    authors.into_iter().map(|(session, user)| Author { session, user }).collect()
}

pub(crate) fn reply(
    code: concord_protocol::ErrorCode,
    message: impl Into<String>,
) -> concord_protocol::ErrorReply {
    concord_protocol::ErrorReply::new(code, message)
}

/// Every session on a model, by connection.
pub(crate) type Members = BTreeMap<ConnId, Member>;

/// A session that has the model open or subscribed, and what it may do.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    pub(crate) session: SessionRef,
    pub(crate) permissions: Permissions,
    /// The session's attachment the membership came from (for [`Notice::Closed`]).
    pub(crate) attachment: u64,
    /// When the session opened the model (for subscribers: when it subscribed).
    pub(crate) since: Timestamp,
}

impl Member {
    pub(crate) fn session_id(&self) -> &SessionId {
        &self.session.session
    }
}

#[cfg(test)]
mod page_tests {
    use concord_ot::{DiscreteOperation, ElementId, OperationKind};

    use super::*;
    use crate::sequencer::PAGE_PARTS;

    /// A stored operation of `edits` one-character inserts, at `version`.
    fn stored(version: u64, edits: usize) -> HistoryOperation {
        let insert = |i: usize| {
            let kind =
                OperationKind::StringSplice { index: i, delete_count: 0, insert: "a".into() };
            DiscreteOperation::new(ElementId::new(1, 1), kind)
        };
        let operation = CommittedOperation {
            version,
            author: SessionId("s".into()),
            timestamp: Timestamp(0),
            operation: Operation::Compound((0..edits).map(insert).collect()),
        };
        HistoryOperation { operation, user: None }
    }

    fn versions(push: &ServerPush) -> (Vec<u64>, bool) {
        match push {
            ServerPush::ResyncPage { operations, last, .. } => {
                (operations.iter().map(|op| op.version).collect(), *last)
            }
            other => panic!("not a page: {other:?}"),
        }
    }

    /// A page of compound operations holds at most `PAGE_PARTS` edits (but always one
    /// operation, however large): the replay goes on after the last one it holds.
    #[test]
    fn replay_pages_are_bounded_by_edits_not_only_operations() {
        let model = ModelId::new("m").unwrap();
        let big: Vec<HistoryOperation> = (1..=10).map(|v| stored(v, 1000)).collect();
        let (push, next) = replay_page(&model, big, 10).unwrap();
        assert_eq!(versions(&push), (vec![1, 2, 3, 4], false));
        assert_eq!(next, Some(4));

        let huge = vec![stored(5, 3 * PAGE_PARTS), stored(6, 1)];
        let (push, next) = replay_page(&model, huge, 6).unwrap();
        assert_eq!(versions(&push), (vec![5], false));
        assert_eq!(next, Some(5));

        let small: Vec<HistoryOperation> = (7..=9).map(|v| stored(v, 1)).collect();
        let (push, next) = replay_page(&model, small, 9).unwrap();
        assert_eq!(versions(&push), (vec![7, 8, 9], true));
        assert_eq!(next, None);
    }

    #[test]
    fn a_page_holds_at_most_max_operations() {
        let ops: Vec<HistoryOperation> = (1..=10).map(|v| stored(v, 1)).collect();
        let operations = ops.iter().map(|op| &op.operation.operation);
        assert_eq!(page_len(operations, 3), 3);
        assert_eq!(page_len(std::iter::empty(), 3), 0);
    }
}
