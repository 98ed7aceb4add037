//! The client engine: every model a client holds in memory, one connection, one store.
//!
//! [`ClientEngine`] is sans-IO, in the manner of quinn-proto's `Connection`: it owns the
//! whole protocol and all of its timing, and the driver only moves bytes, store batches and
//! the time. The driver feeds it what happens — the application's calls
//! ([`connect`](ClientEngine::connect), [`local_edit`](ClientEngine::local_edit),
//! [`open_at_server`](ClientEngine::open_at_server), …), the connection's fate
//! ([`handle_connected`](ClientEngine::handle_connected),
//! [`handle_connect_failed`](ClientEngine::handle_connect_failed),
//! [`handle_disconnected`](ClientEngine::handle_disconnected)), what the server sent
//! ([`handle_message`](ClientEngine::handle_message)), what the store made durable
//! ([`handle_durable`](ClientEngine::handle_durable)) and the passing of time
//! ([`handle_timeout`](ClientEngine::handle_timeout)) — and after **each** call drains, in
//! this order:
//!
//! 1. [`poll_storage`](ClientEngine::poll_storage): batches to commit to the store, in order,
//!    each atomically; report each with `handle_durable` once it is durable (batches may be
//!    merged into one commit, but must become durable in order);
//! 2. [`poll_transmit`](ClientEngine::poll_transmit): messages to send, in order (the time
//!    passed in starts their answer's deadline);
//! 3. [`poll_event`](ClientEngine::poll_event): what the application should hear;
//! 4. [`poll_action`](ClientEngine::poll_action): connect or disconnect;
//! 5. [`poll_load`](ClientEngine::poll_load): stored models to load for background sync
//!    (after their queued batches are durable), answered with
//!    [`handle_loaded`](ClientEngine::handle_loaded).
//!
//! Then it sleeps until [`poll_timeout`](ClientEngine::poll_timeout) (or until something
//! else happens) and calls `handle_timeout`; a call before the deadline does nothing.
//!
//! Storage comes first because nothing the engine sends depends on a batch that is not yet
//! durable: a local change is submitted only after the batch recording it is reported
//! durable, and a submission only after its in-flight boundary is.
//!
//! Time: the engine reconnects with exponential backoff and jitter, pings the server every
//! [`EngineConfig::heartbeat`], and drops the connection (then reconnects) when the server
//! stays silent for [`EngineConfig::silence_timeout`] or leaves a request or a submission
//! unanswered for [`EngineConfig::request_timeout`]: what the server did with it is then
//! unknown, and resyncing on a new connection is the one recovery that is right for every
//! request.

mod activity;
mod authors;
mod presence;
mod references;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use concord_ot::{ApplyError, Document, ElementId, IdGenerator, Operation, ReplicaId};
use concord_protocol::{
    ActivityId, Auth, ClientMessage, ClientNotice, ClientRequest, ClientResponse, Collaborator,
    CollectionId, CreationNonce, ErrorCode, ErrorReply, HandshakeRejection, InFlight, KnownModel,
    ModelId, ModelSnapshot, NewModel, OfflineUpdate, ReconnectToken, RequestId, ServerLimits,
    ServerMessage, ServerPush, ServerRequest, ServerResponse, Session, SessionId, SyncSubmission,
    Timestamp,
};
use concord_storage::Tombstone;

use crate::attach::{Budget, Progress, Slot};
use crate::events::{ConnectionState, DomainEvent, Event, ModelEvent, OpenFailure};
use crate::host::HistoryQuery;
use crate::reference::ReferenceError;
use crate::replica::{ModelReplica, ReplicaError, StoreChange};
use crate::shared::ModelReferences;
use crate::store::Restored;
use crate::time::{Backoff, Time};

/// Tuning of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// The most local operations one submission carries, so that a long offline session
    /// goes out as a sequence of bounded batches.
    pub max_batch_parts: usize,
    /// The most bytes (encoded operations, roughly) one submission carries beyond its first
    /// run of local operations: offline changes composed into few large runs still go out
    /// in bounded messages.
    pub max_batch_bytes: usize,
    /// Store a snapshot in place of the server operations after this many.
    pub compact_every: usize,
    /// How many stored models with unsent changes are loaded at once to sync after a
    /// reconnection, so that their states in memory are bounded by this rather than by the
    /// number of such models; they are synced side by side (pipelined), so this is also
    /// how many round trips overlap. Also the slots of the server's open-model limit that
    /// background sync keeps for itself (at most half the limit): see `docs/sync.md`.
    pub sync_concurrency: usize,
    /// The server's limit on models open on one connection, if known (the server's own
    /// default is 1,000). Unknown, the engine learns it from the first `overloaded`
    /// refusal. [`ClientEngine::set_max_open_models`] changes it later (from the session).
    pub max_open_models: Option<usize>,
    /// The wait before trying again after a connection was lost or an attempt failed; it
    /// doubles after every failed attempt up to `max_backoff`, and starts over once
    /// connected.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How much of each reconnect wait is random, in percent: the wait is drawn between
    /// `100 - p` % and 100 % of the backoff, so that the clients a server dropped together
    /// (a restart, a network blip) do not all come back in the same instant. 0 waits the
    /// backoff exactly; above 100 counts as 100. The draws come from a generator seeded by
    /// the engine's replica id, which each store draws at random: engines differ, and one
    /// engine's waits are reproducible (tests, simulations).
    pub reconnect_jitter_percent: u8,
    /// How often a connected engine pings the server.
    pub heartbeat: Duration,
    /// A server heard nothing from for this long is gone: the connection is dropped and
    /// established again.
    pub silence_timeout: Duration,
    /// How long a request, a submission (its ack) and the handshake may wait for the
    /// answer; past it the connection is dropped and established again.
    pub request_timeout: Duration,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            max_batch_parts: 256,
            max_batch_bytes: 64 * 1024,
            compact_every: 500,
            sync_concurrency: 32,
            max_open_models: None,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            reconnect_jitter_percent: 50,
            heartbeat: Duration::from_secs(10),
            silence_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What the driver must do with the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a connection and hand the server `auth` in the handshake; report how it went
    /// with [`ClientEngine::handle_connected`] or [`ClientEngine::handle_connect_failed`].
    Connect { auth: Auth },
    /// Close the connection. The engine already counts it as gone: do not report
    /// [`ClientEngine::handle_disconnected`] for it.
    Disconnect { reason: DisconnectReason },
}

/// Why the engine drops its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The application disconnected.
    Requested,
    /// Nothing came from the server for [`EngineConfig::silence_timeout`].
    ServerSilent,
    /// A request or submission went unanswered for [`EngineConfig::request_timeout`].
    RequestTimedOut,
}

/// Identifies a storage batch for [`ClientEngine::handle_durable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchId(pub u64);

/// Changes to one model's stored state, to commit atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageBatch {
    pub id: BatchId,
    pub model: ModelId,
    pub changes: Vec<StoreChange>,
}

/// Why a call into the engine was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("model {0} is not loaded")]
    NotLoaded(ModelId),
    #[error("model {0} is already loaded")]
    AlreadyLoaded(ModelId),
    #[error("model {0} was deleted here and the server has not confirmed it yet")]
    DeletionPending(ModelId),
    /// Only the server has the model, and the engine is not connected.
    #[error("model {0} can only be opened at the server, and the engine is offline")]
    Offline(ModelId),
    /// The application's models already fill the server's open-model limit.
    #[error("the server allows {limit} models open at once, and that many are open here")]
    TooManyOpen { limit: usize },
    #[error(transparent)]
    Invalid(#[from] ApplyError),
    #[error("invalid reference: {0}")]
    InvalidReference(#[from] ReferenceError),
}

/// Identifies a request the application sent through [`ClientEngine::call`], for its answer
/// from [`ClientEngine::poll_answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

/// Why a [`ClientEngine::call`] got no answer from the server.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    /// Not connected: the request was not sent, and is not queued for later.
    #[error("the client is offline; the request was not sent")]
    Offline,
    /// The connection ended before the answer came; whether the server carried the request
    /// out is unknown.
    #[error("the connection was lost before the server answered")]
    ConnectionLost,
    /// The server answered with an error.
    #[error("the server refused: {0}")]
    Refused(ErrorReply),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Offline,
    /// Offline because the server refused it on this connection: it no longer serves it,
    /// refused to create it, or failed it (tried again after a backoff). The next connection
    /// tries it again.
    Refused,
    /// Background sync: waiting for the boundary of the submission its `Sync` request
    /// carries to be durable.
    Preparing,
    /// Waiting for the server to create a model created here.
    Creating,
    /// A resync was requested; replay pages count only once its answer
    /// (`ResyncStarted`) arrived, since pages of an abandoned earlier resync may precede it.
    Resyncing,
    Replaying,
    Live,
}

#[derive(Debug)]
struct Model {
    replica: ModelReplica,
    link: Link,
    /// Loaded only to sync its stored changes; released once they are acknowledged.
    background: bool,
    /// Created here and not yet confirmed by the server: it is created before it resyncs.
    creation: Option<CreationNonce>,
    /// The batch storing the creation, until durable: the server hears of the model only
    /// once the store knows it, or a crash could leave the server with a model nobody has.
    creation_batch: Option<BatchId>,
    /// Mints the ids of the elements local changes create.
    ids: IdGenerator,
    /// The element counter the store has once the queued batches are durable.
    stored_counter: u64,
    /// What it holds of the server's open-model budget.
    slot: Slot,
    /// Attached at the server on this connection: resynced, not refused, not closed.
    attached: bool,
    /// When it took its slot: the newest live model is parked first.
    order: u64,
    /// Told `Online` (and not `Offline` since).
    online: bool,
    /// Waiting in the budget's `parked` queue.
    queued_live: bool,
    /// Waiting in the budget's `turns` queue.
    queued_turn: bool,
    /// This client's shared references on the model, and other sessions'.
    references: ModelReferences,
    /// The server takes this client's references on the model: its resync completed on
    /// this connection, with the model kept open.
    sharing: bool,
    /// The other sessions that have the model open, as last listed and told.
    collaborators: BTreeMap<SessionId, Collaborator>,
    /// Attached by a `Sync` request, which the server ends by closing the model itself.
    server_closes: Option<ServerCloses>,
}

/// When the server closes a model a `Sync` request attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerCloses {
    /// Once it answered the submission with this seq (ack or refusal).
    OnAnswer(u64),
    /// With the replay's last page (the request carried no submission).
    AfterReplay,
}

/// A request sent on the current connection and not answered yet.
#[derive(Debug)]
struct Outstanding {
    purpose: Request,
    /// Set when it is handed to the driver to send.
    deadline: Option<Time>,
    /// For a request that attaches a model: how many were attached before it, which is the
    /// server's limit if it refuses with `overloaded`.
    attached_before: Option<usize>,
}

/// What a request is for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Request {
    Resync(ModelId),
    /// A `Sync` request; `creates` when it carried the model's creation.
    Sync {
        model: ModelId,
        creates: bool,
    },
    Create(ModelId),
    Delete(ModelId),
    Open(ModelId),
    /// The application's own request: its answer goes back to it.
    Call(CallId),
    /// Following users' presence again after a reconnection.
    PresenceResync,
    /// The application joining an activity.
    JoinActivity(CallId, ActivityId),
    /// Joining an activity again after a reconnection.
    RejoinActivity(ActivityId),
    /// Its answer lists the collaborators and their references.
    ResyncComplete(ModelId),
    /// A history request of the application's: its answer goes to `poll_history`.
    History(HistoryTicket),
    /// Its answer changes nothing here (close, subscribe).
    Other,
}

/// Names a history request ([`ClientEngine::request_history`]) and its answer
/// ([`ClientEngine::poll_history`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HistoryTicket(pub u64);

/// The answer to a history request: the server's response or error (a lost connection
/// answers `timeout`).
pub type HistoryAnswer = Result<ServerResponse, ErrorReply>;

/// An open at the server waiting for a live slot, or for its answer.
#[derive(Debug)]
struct OpenAtServer {
    /// What to create the model from if the server has none; taken when it asks.
    auto_create: Option<(CollectionId, Document)>,
    /// Sent (it holds a live slot); otherwise waiting in `open_queue`.
    sent: bool,
}

/// What becomes possible once a batch is durable.
#[derive(Debug, Clone)]
struct BatchEffect {
    model: ModelId,
    stored_seq: Option<u64>,
    in_flight: Option<u64>,
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connection {
    /// Offline and not trying: not asked to connect, disconnected, or refused for good.
    Idle,
    /// Offline, trying again at `at`.
    Waiting {
        at: Time,
    },
    /// The driver was asked to connect and has not said how it went.
    Connecting {
        attempt: Attempt,
    },
    Connected {
        last_heard: Time,
        next_ping: Time,
    },
}

/// Who asked for a connection attempt, and with what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// The application's [`ClientEngine::connect`]: a failure is its to handle, and is not
    /// retried.
    Requested,
    /// A reconnection with the reconnect token; refused, the credentials are tried at once.
    Token,
    /// A reconnection with the credentials.
    Credentials,
}

/// One client's sync state machine.
#[derive(Debug)]
pub struct ClientEngine {
    replica_id: ReplicaId,
    config: EngineConfig,
    connection: Connection,
    /// The state last reported to the application.
    reported: ConnectionState,
    /// What the application connected with, to reconnect with when the token fails.
    credentials: Option<Auth>,
    /// The last handshake's reconnect token, tried first when reconnecting.
    reconnect_token: Option<ReconnectToken>,
    /// The wait before the next reconnection attempt, before its jitter.
    backoff: Duration,
    /// Draws each reconnect wait's jitter; seeded by the replica id.
    jitter: fastrand::Rng,
    actions: VecDeque<Action>,
    models: BTreeMap<ModelId, Model>,
    next_request: u64,
    /// Requests sent on the current connection and not answered yet.
    requests: BTreeMap<RequestId, Outstanding>,
    next_history: u64,
    /// Answers to history requests, for `poll_history`.
    history_answers: VecDeque<(HistoryTicket, HistoryAnswer)>,
    /// When the ack of each model's submission on the wire is due.
    acks: BTreeMap<ModelId, Time>,
    /// Models being opened at the server.
    opens: BTreeMap<ModelId, OpenAtServer>,
    /// Models deleted here and not yet confirmed.
    tombstones: BTreeMap<ModelId, Deletion>,
    /// The offline subscription set, with the version the store holds (`None`: not
    /// downloaded yet).
    subscriptions: BTreeMap<ModelId, Option<u64>>,
    next_batch: u64,
    effects: BTreeMap<BatchId, BatchEffect>,
    storage: VecDeque<StorageBatch>,
    transmit: VecDeque<ClientMessage>,
    events: VecDeque<Event>,
    /// Stored models waiting to be loaded for background sync.
    sync_waiting: VecDeque<ModelId>,
    /// Models the next connection syncs whether or not the host's list of stored models
    /// has them (their last batches may not be durable when it is read): released from
    /// memory owing the server changes while no connection could sync them, or still
    /// waiting or loading when the last connection dropped.
    sync_when_connected: BTreeSet<ModelId>,
    /// Loads for the driver to take ([`ClientEngine::poll_load`]).
    loads: VecDeque<ModelId>,
    /// The models asked to be loaded on this connection (in `loads` or taken by the
    /// driver) and not answered yet.
    loading: BTreeSet<ModelId>,
    /// The limits the server told in the last accepted handshake.
    server_limits: Option<ServerLimits>,
    progress: Progress,
    /// The server's open-model limit, and who holds and waits for its slots.
    budget: Budget,
    /// When to ask again for the creations and deletions the server could not take for its
    /// state (a backoff of their own, so that they never hold back opening models).
    asks: Backoff,
    /// The models the server failed on this connection, loading them or taking a submission
    /// ([`DomainEvent::ServerFault`]), each tried again after a backoff of its own.
    faulted: BTreeMap<ModelId, Fault>,
    /// Opens at the server waiting for a live slot.
    open_queue: VecDeque<ModelId>,
    next_call: u64,
    /// Answers to the application's calls, for `poll_answer`.
    answers: VecDeque<(CallId, Result<ServerResponse, CallError>)>,
    presence: presence::Presence,
    activities: activity::Activities,
    /// The session of the current (or last) connection.
    session: Option<SessionId>,
    /// Other sessions' users, also after they left.
    authors: authors::Authors,
}

/// A model the server failed to load, or whose submission it failed
/// ([`DomainEvent::ServerFault`]): its store may be repaired, or its fault pass, while this
/// connection lasts.
#[derive(Debug)]
struct Fault {
    /// From `initial_backoff`, doubling up to [`FAULT_BACKOFF_GROWTH`] times `max_backoff`: a
    /// damaged record rarely mends itself, and each attempt costs the server a load.
    retry: Backoff,
    /// Whether the failure counted in [`DomainEvent::SyncProgress`] (the retry takes it back).
    counted: bool,
    /// Whether the server failed a submission (over once one is acknowledged) rather than
    /// the model's load (over once a resync is answered).
    submission: bool,
}

/// How far a faulted model's retries back off, as a multiple of `max_backoff` (5 minutes by
/// default).
const FAULT_BACKOFF_GROWTH: u32 = 30;

/// A model deleted here whose deletion the server has not confirmed.
#[derive(Debug)]
struct Deletion {
    collection: CollectionId,
    /// The model's creation, if the server had not confirmed it when it was deleted: the
    /// deletion names it, so that only the model it made is deleted.
    creation: Option<CreationNonce>,
    /// The batch storing the tombstone, until it is durable (the server hears of it only
    /// then).
    batch: Option<BatchId>,
}

impl ClientEngine {
    pub fn new(replica_id: ReplicaId, config: EngineConfig) -> ClientEngine {
        ClientEngine {
            replica_id,
            config,
            connection: Connection::Idle,
            reported: ConnectionState::Disconnected,
            credentials: None,
            reconnect_token: None,
            backoff: config.initial_backoff,
            jitter: fastrand::Rng::with_seed(replica_id.0),
            actions: VecDeque::new(),
            models: BTreeMap::new(),
            next_request: 1,
            requests: BTreeMap::new(),
            next_history: 1,
            history_answers: VecDeque::new(),
            acks: BTreeMap::new(),
            opens: BTreeMap::new(),
            tombstones: BTreeMap::new(),
            subscriptions: BTreeMap::new(),
            next_batch: 1,
            effects: BTreeMap::new(),
            storage: VecDeque::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            sync_waiting: VecDeque::new(),
            sync_when_connected: BTreeSet::new(),
            loads: VecDeque::new(),
            loading: BTreeSet::new(),
            server_limits: None,
            progress: Progress::default(),
            budget: Budget::new(
                config.max_open_models,
                config.sync_concurrency,
                config.initial_backoff,
                config.max_backoff,
            ),
            asks: Backoff::new(config.initial_backoff, config.max_backoff),
            faulted: BTreeMap::new(),
            open_queue: VecDeque::new(),
            next_call: 1,
            answers: VecDeque::new(),
            presence: presence::Presence::default(),
            activities: activity::Activities::default(),
            session: None,
            authors: authors::Authors::default(),
        }
    }

    /// The server's limit on models open on one connection, when it becomes known (from
    /// the session); `None` forgets a limit told before (one learned from a refusal stays).
    /// Takes effect at once: models beyond it are parked.
    pub fn set_max_open_models(&mut self, limit: Option<usize>) {
        self.budget.tell(limit);
        self.schedule();
    }

    pub fn replica_id(&self) -> ReplicaId {
        self.replica_id
    }

    /// What the server allows this client (open models, subscriptions, frame, message and
    /// model sizes), as its last accepted handshake said; `None` before the first one. Kept
    /// while offline: the next connection is most likely to the same server.
    pub fn server_limits(&self) -> Option<ServerLimits> {
        self.server_limits
    }

    /// Takes a model into memory, restored from the store ([`store::restore`]) or fresh
    /// (`ModelReplica::into`). A model whose creation the server has not confirmed is
    /// created there first. When connected it resyncs at once.
    ///
    /// [`store::restore`]: crate::store::restore
    pub fn add_model(&mut self, model: ModelId, restored: Restored) -> Result<(), EngineError> {
        if self.models.contains_key(&model) {
            return Err(EngineError::AlreadyLoaded(model));
        }
        self.insert(model, self.entry(restored, false));
        Ok(())
    }

    /// A model's in-memory state. Its element ids continue past the stored counter and
    /// past every id of this replica in the document (a model stored anew — downloaded
    /// again — may hold ids this replica minted before).
    fn entry(&self, restored: Restored, background: bool) -> Model {
        let Restored { replica, creation, next_element_counter } = restored;
        let next = next_element_counter.max(next_counter_for(replica.local(), self.replica_id));
        Model {
            replica,
            link: Link::Offline,
            background,
            creation,
            creation_batch: None,
            ids: IdGenerator::new(self.replica_id, next),
            stored_counter: next_element_counter,
            slot: Slot::None,
            attached: false,
            order: 0,
            online: false,
            queued_live: false,
            queued_turn: false,
            references: ModelReferences::default(),
            sharing: false,
            collaborators: BTreeMap::new(),
            server_closes: None,
        }
    }

    fn insert(&mut self, model: ModelId, entry: Model) {
        self.models.insert(model.clone(), entry);
        if self.is_connected() {
            self.attach(&model);
        }
    }

    /// Opens a model that is neither in memory nor in the store: asks the server for it.
    /// With `auto_create`, a model the server does not have is created there from this
    /// collection and data (the server asks for them, `AutoCreate`). The answer comes as
    /// [`DomainEvent::Opened`] — the model is then stored and loaded, and syncs like any
    /// other — or [`DomainEvent::OpenFailed`]. Opening a model already being opened joins
    /// that open.
    pub fn open_at_server(
        &mut self,
        model: ModelId,
        auto_create: Option<(CollectionId, Document)>,
    ) -> Result<(), EngineError> {
        if self.models.contains_key(&model) {
            return Err(EngineError::AlreadyLoaded(model));
        }
        if self.tombstones.contains_key(&model) {
            return Err(EngineError::DeletionPending(model));
        }
        if !self.is_connected() {
            return Err(EngineError::Offline(model));
        }
        if self.opens.contains_key(&model) {
            return Ok(());
        }
        if let Some(limit) = self.budget.limit()
            && self.budget.live >= limit
        {
            return Err(EngineError::TooManyOpen { limit });
        }
        // It goes out once a live slot is free (at once, unless the budget is full).
        self.opens.insert(model.clone(), OpenAtServer { auto_create, sent: false });
        self.open_queue.push_back(model);
        self.schedule();
        Ok(())
    }

    /// Sends a queued open; it holds a live slot until answered.
    fn send_open(&mut self, model: ModelId) {
        let Some(open) = self.opens.get_mut(&model) else { return };
        if open.sent {
            return;
        }
        open.sent = true;
        let request = ClientRequest::OpenModel {
            model: model.clone(),
            auto_create: open.auto_create.is_some(),
        };
        self.budget.live += 1;
        self.send_attaching(request, Request::Open(model));
    }

    /// The server's answer to an open: the model is stored from its snapshot and loaded.
    fn opened(
        &mut self,
        now: Time,
        model: ModelId,
        answer: Result<ServerResponse, ErrorReply>,
        attached_before: Option<usize>,
    ) {
        let Some(open) = self.opens.remove(&model) else { return };
        if open.sent {
            self.budget.live -= 1;
            self.budget.attached -= 1;
        }
        if let Err(error) = &answer
            && error.code == ErrorCode::OVERLOADED
        {
            // Retried later, first in line.
            self.budget.refused(now, attached_before);
            self.opens.insert(model.clone(), OpenAtServer { sent: false, ..open });
            self.open_queue.push_front(model);
            return;
        }
        let snapshot = match answer {
            Ok(ServerResponse::ModelOpened(opened)) if opened.model == model => opened.snapshot,
            Ok(other) => {
                let message = format!("unexpected answer to an open: {other:?}");
                let error = ErrorReply::new(ErrorCode::UNEXPECTED_MESSAGE, message);
                let failure = OpenFailure::Refused(error);
                return self.domain_event(DomainEvent::OpenFailed { model, failure });
            }
            Err(error) => {
                let failure = OpenFailure::Refused(error);
                return self.domain_event(DomainEvent::OpenFailed { model, failure });
            }
        };
        self.budget.succeeded();
        if self.tombstones.contains_key(&model) {
            // Deleted here while the answer was on its way.
            self.send(ClientRequest::CloseModel { model: model.clone() }, Request::Other);
            let error = ErrorReply::new(ErrorCode::MODEL_DELETED, "deleted here meanwhile");
            let failure = OpenFailure::Refused(error);
            return self.domain_event(DomainEvent::OpenFailed { model, failure });
        }
        if self.models.contains_key(&model) {
            // Loaded from the store meanwhile: it attaches as any other, so this attachment
            // is not needed.
            self.send(ClientRequest::CloseModel { model: model.clone() }, Request::Other);
        } else {
            if let Some(known) = self.subscriptions.get_mut(&model) {
                *known = Some(snapshot.version);
            }
            let replica = ModelReplica::new(snapshot.clone());
            self.queue_batch(&model, vec![StoreChange::Downloaded { snapshot }], None, None);
            // It keeps the open's slot and attachment.
            let mut entry = self.entry(replica.into(), false);
            entry.attached = true;
            self.budget.attached += 1;
            self.models.insert(model.clone(), entry);
            self.set_slot(&model, Slot::Live);
            if self.is_connected() {
                self.attach(&model);
            }
        }
        self.domain_event(DomainEvent::Opened { model });
        self.schedule();
    }

    /// Marks a model loaded for background sync as one the application uses: it is no
    /// longer released when in sync (it finishes its sync as a turn, then stays open if a
    /// live slot is free).
    pub fn keep_loaded(&mut self, model: &ModelId) {
        if let Some(entry) = self.models.get_mut(model) {
            entry.background = false;
        }
    }

    /// The driver loaded a model asked for by [`ClientEngine::poll_load`] with
    /// [`store::restore`](crate::store::restore) (`None`: it is no longer in the store, or
    /// cannot be restored).
    pub fn handle_loaded(&mut self, model: ModelId, loaded: Option<Restored>) {
        if !self.loading.remove(&model) {
            return; // asked on a connection that is gone: the next one syncs it again
        }
        self.budget.sync -= 1;
        match loaded {
            Some(_) if self.tombstones.contains_key(&model) => {
                if self.progress.dropped(&model, false) {
                    self.report_progress();
                }
            }
            // The application opened it meanwhile: it syncs as the application's model
            // (and counts as done once in sync; a parked one waits for a turn).
            Some(_) if self.models.contains_key(&model) => {
                let entry = &self.models[&model];
                if owes(entry) {
                    self.wants_turn(&model);
                    if self.models[&model].link == Link::Refused {
                        // It will not sync on this connection.
                        self.sync_failed(&model);
                    }
                } else if self.progress.done(&model) {
                    self.report_progress();
                }
            }
            Some(restored) => {
                let entry = self.entry(restored, true);
                self.models.insert(model.clone(), entry);
                self.set_slot(&model, Slot::Sync);
                self.attach(&model);
            }
            None => {
                if self.progress.failed(&model) {
                    self.report_progress();
                }
            }
        }
        self.schedule();
    }

    /// Releases a model from memory; its stored state stays. Returns its replica. One with
    /// changes the server has not acknowledged is synced in the background (loaded again
    /// once its turn comes, after its queued batches are durable), so that closing a model
    /// never leaves its changes waiting for the next connection.
    pub fn remove_model(&mut self, model: &ModelId) -> Option<ModelReplica> {
        let entry = self.take_model(model)?;
        // Owing changes, it syncs in the background from now on; owing nothing, it has
        // nothing left to try.
        self.faulted.remove(model);
        let owed = owes(&entry) && !self.tombstones.contains_key(model);
        if owed && !self.is_connected() {
            self.sync_when_connected.insert(model.clone());
        } else if owed && !self.sync_waiting.contains(model) && !self.loading.contains(model) {
            // (A model being loaded for background sync syncs once its load is answered.)
            self.sync_waiting.push_back(model.clone());
            if !self.progress.put_back(model) {
                self.progress.add_waiting();
                self.report_progress();
            }
        }
        self.schedule();
        Some(entry.replica)
    }

    /// Takes a model out of memory, gives back its slot and closes it at the server.
    fn take_model(&mut self, model: &ModelId) -> Option<Model> {
        self.set_slot(model, Slot::None);
        self.close_at_server(model);
        // A creation's answer no longer matters either: the store keeps the creation, and
        // the model's next load sends it again (idempotent by its nonce). Taken as the
        // answer for that next load, it would attach the model a second time.
        let create = Request::Create(model.clone());
        for request in self.requests.values_mut().filter(|r| r.purpose == create) {
            request.purpose = Request::Other;
        }
        self.models.remove(model)
    }

    /// Gives back what `model` holds of the budget.
    fn set_slot(&mut self, model: &ModelId, slot: Slot) {
        let Some(entry) = self.models.get_mut(model) else { return };
        match entry.slot {
            Slot::None => {}
            Slot::Live => self.budget.live -= 1,
            Slot::Sync => self.budget.sync -= 1,
        }
        match slot {
            Slot::None => {}
            Slot::Live => self.budget.live += 1,
            Slot::Sync => self.budget.sync += 1,
        }
        if entry.slot == Slot::None && slot != Slot::None {
            entry.order = self.budget.order();
        }
        entry.slot = slot;
    }

    /// Closes the model at the server if it is attached there.
    fn close_at_server(&mut self, model: &ModelId) {
        self.forget_answers(model);
        let Some(entry) = self.models.get_mut(model) else { return };
        if entry.attached {
            entry.attached = false;
            self.budget.attached -= 1;
            if self.is_connected() {
                self.send(ClientRequest::CloseModel { model: model.clone() }, Request::Other);
            }
        }
    }

    /// The answers still to come to `model`'s resyncs, syncs and submission no longer
    /// matter: it is closed here, or the server no longer serves it.
    fn forget_answers(&mut self, model: &ModelId) {
        for request in self.requests.values_mut() {
            let about_model = match &request.purpose {
                Request::Resync(m)
                | Request::ResyncComplete(m)
                | Request::Sync { model: m, .. } => m == model,
                _ => false,
            };
            if about_model {
                request.purpose = Request::Other;
            }
        }
        self.acks.remove(model);
    }

    pub fn model(&self, model: &ModelId) -> Option<&ModelReplica> {
        self.models.get(model).map(|m| &m.replica)
    }

    pub fn models(&self) -> impl Iterator<Item = &ModelId> {
        self.models.keys()
    }

    /// Whether background sync has nothing left to do on this connection: no stored model
    /// waiting or loading, no model syncing or waiting for a turn, no retry pending after an
    /// `overloaded` refusal (of an open, a creation or a deletion) or a `ServerFault`, no
    /// open waiting for a slot. (The application's models beyond the server's limit may
    /// still wait, parked, with nothing to push.)
    pub fn sync_idle(&self) -> bool {
        !self.background_work()
            && self.budget.retry.at.is_none()
            && self.asks.at.is_none()
            && self.faulted.values().all(|fault| fault.retry.at.is_none())
            && self.open_queue.is_empty()
    }

    /// Whether the model is loaded and in sync with the server (live, nothing unacknowledged).
    pub fn is_settled(&self, model: &ModelId) -> bool {
        self.models
            .get(model)
            .is_some_and(|m| m.link == Link::Live && !m.replica.has_unacknowledged())
    }

    /// Makes a local change: `build` makes the operation against the model's local view,
    /// taking the ids of new elements from the model's generator (whose counter is stored
    /// with the change, so that no id is minted twice). The change is applied to the local
    /// view and recorded for the store. Returns its seq.
    pub fn local_edit<E: From<EngineError>>(
        &mut self,
        model: &ModelId,
        build: impl FnOnce(&Document, &mut IdGenerator) -> Result<Operation, E>,
    ) -> Result<u64, E> {
        let entry =
            self.models.get_mut(model).ok_or_else(|| EngineError::NotLoaded(model.clone()))?;
        let operation = build(entry.replica.local(), &mut entry.ids)?;
        let was_committed = !entry.replica.has_unacknowledged();
        let (seq, applied, change) =
            entry.replica.local_change(operation.clone()).map_err(EngineError::from)?;
        let ended = entry.references.local_change(&operation, entry.replica.local());
        let mut changes = vec![change];
        let next = entry.ids.next_counter();
        if next > entry.stored_counter {
            entry.stored_counter = next;
            changes.push(StoreChange::AdvanceElementCounter(next));
        }
        self.queue_batch(model, changes, Some(seq), None);
        self.ended(model, ended);
        if was_committed {
            self.model_event(model, ModelEvent::Modified);
            // A parked model now has something to push: it waits for a turn too.
            self.wants_turn(model);
            self.schedule();
        }
        for event in ModelEvent::changes(&operation, &applied, None) {
            self.model_event(model, event);
        }
        Ok(seq)
    }

    /// [`local_edit`](ClientEngine::local_edit) with an operation already made; it must
    /// create no element (it has no ids from the model's generator).
    pub fn local_change(
        &mut self,
        model: &ModelId,
        operation: Operation,
    ) -> Result<u64, EngineError> {
        self.local_edit(model, |_, _| Ok(operation))
    }

    /// The application wants to be online with these credentials: the engine asks the
    /// driver to connect now ([`Action::Connect`]). If that attempt fails the engine stays
    /// offline (the application hears why from the driver); once connected, a lost
    /// connection is re-established with backoff — with the server's reconnect token first,
    /// then these credentials — until [`ClientEngine::disconnect`].
    pub fn connect(&mut self, auth: Auth) {
        self.credentials = Some(auth.clone());
        if self.is_connected() {
            return;
        }
        self.actions.retain(|a| !matches!(a, Action::Connect { .. }));
        self.actions.push_back(Action::Connect { auth });
        self.connection = Connection::Connecting { attempt: Attempt::Requested };
        self.report(ConnectionState::Connecting);
    }

    /// The application wants to be offline: the connection is closed
    /// ([`Action::Disconnect`]) and not re-established. Work goes on offline.
    pub fn disconnect(&mut self) {
        self.actions.retain(|a| !matches!(a, Action::Connect { .. }));
        if self.is_connected() {
            self.actions.push_back(Action::Disconnect { reason: DisconnectReason::Requested });
            self.went_offline();
        }
        self.connection = Connection::Idle;
        self.report(ConnectionState::Disconnected);
    }

    /// A connection is up (handshake accepted with `session`): every loaded model resyncs
    /// first; then the stored models in `stored_with_changes` (unsent or unacknowledged
    /// changes), and those the engine released owing changes since the last connection
    /// (which a list read before their last batches were durable lacks), are loaded a few
    /// at a time ([`EngineConfig::sync_concurrency`]) through [`ClientEngine::poll_load`],
    /// synced, and released.
    ///
    /// `stored_tombstones` are the models the store holds as deleted here and not yet
    /// confirmed; their deletion is sent again.
    pub fn handle_connected(
        &mut self,
        now: Time,
        session: &Session,
        stored_with_changes: Vec<ModelId>,
        stored_tombstones: Vec<Tombstone>,
    ) {
        self.actions.retain(|a| !matches!(a, Action::Connect { .. }));
        self.reconnect_token = Some(session.reconnect_token.clone());
        self.server_limits = Some(session.limits);
        self.session = Some(session.session.clone());
        // Background sync keeps within what the server allows, and within what the
        // application configured if that is less.
        let told = usize::try_from(session.limits.max_open_models).unwrap_or(usize::MAX);
        self.budget.tell(Some(self.config.max_open_models.map_or(told, |own| own.min(told))));
        self.backoff = self.config.initial_backoff;
        let next_ping = now + self.config.heartbeat;
        self.connection = Connection::Connected { last_heard: now, next_ping };
        self.report(ConnectionState::Connected);
        self.presence_connected();
        self.activities_connected(session.session.clone());
        self.add_tombstones(stored_tombstones);
        if !self.subscriptions.is_empty() {
            let subscribe = self.known_models(self.subscriptions.keys().cloned().collect());
            let request = ClientRequest::SubscribeOffline {
                subscribe,
                unsubscribe: Vec::new(),
                replace: true,
            };
            self.send(request, Request::Other);
        }
        // Listed first, so that the application's models know they share the budget.
        // In place: the ids of thousands of models changed offline are held once.
        let mut released = std::mem::take(&mut self.sync_when_connected);
        for model in &stored_with_changes {
            released.remove(model);
        }
        self.sync_waiting = VecDeque::from(stored_with_changes);
        self.sync_waiting.extend(released);
        self.sync_waiting
            .retain(|m| !self.models.contains_key(m) && !self.tombstones.contains_key(m));
        self.progress.start(self.sync_waiting.len());
        if self.progress.total > 0 {
            self.report_progress();
        }
        let models: Vec<ModelId> = self.models.keys().cloned().collect();
        for model in models {
            self.attach(&model);
        }
        self.schedule();
    }

    /// The connection attempt asked for by [`Action::Connect`] failed: `rejection` when the
    /// server refused the handshake, `None` when it could not be reached (or did not answer
    /// in time). The engine tries again with backoff — at once with the credentials when the
    /// reconnect token was refused — except after the application's own attempt, or when
    /// the server says retrying cannot succeed.
    pub fn handle_connect_failed(&mut self, now: Time, rejection: Option<HandshakeRejection>) {
        let Connection::Connecting { attempt } = self.connection else { return };
        match (attempt, rejection) {
            (Attempt::Requested, _) => {
                self.connection = Connection::Idle;
                self.report(ConnectionState::Disconnected);
            }
            (Attempt::Token, Some(_)) => {
                // An expired token: the credentials may still do.
                self.reconnect_token = None;
                self.attempt();
            }
            (_, Some(rejection)) if !rejection.retry_allowed => {
                self.connection = Connection::Idle;
                self.domain_event(DomainEvent::ConnectionRefused(rejection));
                self.report(ConnectionState::Disconnected);
            }
            _ => self.retry_later(now),
        }
    }

    /// The connection broke (closed, or a send failed): everything waits offline, local
    /// changes keep being stored, and the engine reconnects after a backoff.
    pub fn handle_disconnected(&mut self, now: Time) {
        if !self.is_connected() {
            return;
        }
        self.went_offline();
        self.retry_later(now);
    }

    /// Fires what is due at `now`: a reconnection attempt, a heartbeat ping, or dropping a
    /// connection whose server is silent or left something unanswered too long. Harmless
    /// when nothing is due.
    pub fn handle_timeout(&mut self, now: Time) {
        if self.is_connected() && self.budget.retry.take_due(now) {
            self.schedule();
        }
        if self.is_connected() && self.asks.take_due(now) {
            self.send_creations();
            self.send_deletions();
        }
        if self.is_connected() {
            self.retry_faults(now);
        }
        match self.connection {
            Connection::Waiting { at } if at <= now => self.attempt(),
            Connection::Connected { last_heard, next_ping } => {
                let silent = last_heard + self.config.silence_timeout <= now;
                let overdue: Vec<RequestId> = self
                    .requests
                    .iter()
                    .filter(|(_, r)| r.deadline.is_some_and(|d| d <= now))
                    .map(|(id, _)| *id)
                    .collect();
                self.acks.retain(|model, _| self.models.get(model).is_some_and(awaits_ack));
                let ack_overdue = self.acks.values().any(|d| *d <= now);
                if !overdue.is_empty() || ack_overdue {
                    for id in overdue {
                        if let Some(Outstanding { purpose: Request::Open(model), .. }) =
                            self.requests.remove(&id)
                        {
                            self.opens.remove(&model);
                            let failure = OpenFailure::TimedOut;
                            self.domain_event(DomainEvent::OpenFailed { model, failure });
                        }
                    }
                    self.drop_connection(now, DisconnectReason::RequestTimedOut);
                } else if silent {
                    self.drop_connection(now, DisconnectReason::ServerSilent);
                } else if next_ping <= now {
                    self.send(ClientRequest::Ping, Request::Other);
                    let next_ping = now + self.config.heartbeat;
                    self.connection = Connection::Connected { last_heard, next_ping };
                }
            }
            _ => {}
        }
    }

    /// When [`ClientEngine::handle_timeout`] has something to do next, if ever.
    pub fn poll_timeout(&self) -> Option<Time> {
        match self.connection {
            Connection::Waiting { at } => Some(at),
            Connection::Connected { last_heard, next_ping } => {
                let requests = self.requests.values().filter_map(|r| r.deadline);
                let acks = self
                    .acks
                    .iter()
                    .filter(|(model, _)| self.models.get(*model).is_some_and(awaits_ack))
                    .map(|(_, deadline)| *deadline);
                let silence = last_heard + self.config.silence_timeout;
                let retries = [self.budget.retry.at, self.asks.at].into_iter().flatten();
                let faults = self.faulted.values().filter_map(|f| f.retry.at);
                let retries = retries.chain(faults);
                requests.chain(acks).chain([next_ping, silence]).chain(retries).min()
            }
            Connection::Idle | Connection::Connecting { .. } => None,
        }
    }

    /// What the driver must do with the connection.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The state of the connection as the engine sees it.
    pub fn connection_state(&self) -> ConnectionState {
        self.reported.clone()
    }

    fn is_connected(&self) -> bool {
        matches!(self.connection, Connection::Connected { .. })
    }

    fn report(&mut self, state: ConnectionState) {
        if self.reported != state {
            self.reported = state.clone();
            self.domain_event(DomainEvent::State(state));
        }
    }

    /// Asks the driver to connect, with the reconnect token if there is one.
    fn attempt(&mut self) {
        let (auth, attempt) = match (&self.reconnect_token, &self.credentials) {
            (Some(token), _) => (Auth::Reconnect(token.clone()), Attempt::Token),
            (None, Some(credentials)) => (credentials.clone(), Attempt::Credentials),
            (None, None) => return self.give_up(),
        };
        self.actions.push_back(Action::Connect { auth });
        self.connection = Connection::Connecting { attempt };
        self.report(ConnectionState::Connecting);
    }

    /// Schedules the next attempt after the backoff less its jitter, and doubles the backoff.
    fn retry_later(&mut self, now: Time) {
        if self.reconnect_token.is_none() && self.credentials.is_none() {
            return self.give_up();
        }
        let backoff =
            u64::try_from(self.backoff.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX);
        let percent = u64::from(self.config.reconnect_jitter_percent.min(100));
        let spread = backoff / 100 * percent + backoff % 100 * percent / 100;
        let wait = backoff - self.jitter.u64(0..=spread);
        self.connection = Connection::Waiting { at: now + Duration::from_millis(wait) };
        self.backoff =
            (self.backoff * 2).min(self.config.max_backoff.max(self.config.initial_backoff));
        self.report(ConnectionState::Reconnecting);
    }

    /// Nothing to connect with: offline until the application connects.
    fn give_up(&mut self) {
        self.connection = Connection::Idle;
        self.report(ConnectionState::Disconnected);
    }

    /// Drops the connection the engine no longer trusts, and reconnects after a backoff.
    fn drop_connection(&mut self, now: Time, reason: DisconnectReason) {
        self.actions.push_back(Action::Disconnect { reason });
        self.went_offline();
        self.retry_later(now);
    }

    fn report_progress(&mut self) {
        let Progress { done, failed, total, .. } = self.progress;
        self.domain_event(DomainEvent::SyncProgress { done, failed, total });
    }

    /// A model of background sync stopped without being in sync, for a reason reported
    /// with its own event.
    fn sync_failed(&mut self, model: &ModelId) {
        if self.progress.failed(model) {
            self.report_progress();
        }
    }

    /// Whether background sync has work: models to load, turns to give, or slots in use.
    fn background_work(&self) -> bool {
        !self.sync_waiting.is_empty() || !self.budget.turns.is_empty() || self.budget.sync > 0
    }

    /// Hands out free slots: first to the application (opens at the server, then parked
    /// models), then to background sync (turns, then stored models to load). Parks the
    /// newest live models first if they hold more than their share.
    fn schedule(&mut self) {
        if !self.is_connected() || self.budget.retry.at.is_some() {
            return;
        }
        self.rebalance();
        while self.budget.may_go_live(self.background_work()) {
            if let Some(model) = self.open_queue.pop_front() {
                self.send_open(model);
                continue;
            }
            let Some(model) = self.budget.parked.pop_front() else { break };
            let Some(entry) = self.models.get_mut(&model) else { continue };
            entry.queued_live = false;
            if entry.background || entry.creation.is_some() {
                continue;
            }
            match entry.slot {
                Slot::Live => {}
                // On a turn: it stays open, now for good.
                Slot::Sync => self.set_slot(&model, Slot::Live),
                Slot::None => {
                    self.set_slot(&model, Slot::Live);
                    self.start_resync(&model);
                }
            }
        }
        while self.budget.may_sync() {
            if let Some(model) = self.budget.turns.pop_front() {
                let Some(entry) = self.models.get_mut(&model) else { continue };
                entry.queued_turn = false;
                let owes = entry.replica.has_unacknowledged();
                if entry.background || entry.slot != Slot::None || entry.creation.is_some() || !owes
                {
                    continue;
                }
                self.set_slot(&model, Slot::Sync);
                self.start_resync(&model);
                continue;
            }
            let Some(model) = self.sync_waiting.pop_front() else { break };
            self.progress.take(model.clone());
            self.budget.sync += 1;
            self.loading.insert(model.clone());
            self.loads.push_back(model);
        }
    }

    /// While background sync has work, the application's models hold at most the limit
    /// less the sync reserve: the newest beyond it wait (parked), first in line.
    fn rebalance(&mut self) {
        let cap = self.budget.live_cap(self.background_work());
        while self.budget.live > cap {
            let newest = self
                .models
                .iter()
                .filter(|(_, m)| m.slot == Slot::Live)
                .max_by_key(|(_, m)| m.order)
                .map(|(id, _)| id.clone());
            let Some(model) = newest else { break };
            self.park(&model, true);
        }
    }

    /// Takes an application's model off the server until a live slot is free for it; one
    /// with changes to push also waits for a turn.
    fn park(&mut self, model: &ModelId, first: bool) {
        self.set_slot(model, Slot::None);
        self.close_at_server(model);
        let Some(entry) = self.models.get_mut(model) else { return };
        entry.link = Link::Offline;
        if !entry.queued_live {
            entry.queued_live = true;
            if first {
                self.budget.parked.push_front(model.clone());
            } else {
                self.budget.parked.push_back(model.clone());
            }
        }
        self.wants_turn(model);
        self.go_offline(model);
    }

    /// Queues a parked model with unacknowledged changes for a turn.
    fn wants_turn(&mut self, model: &ModelId) {
        let connected = self.is_connected();
        let Some(entry) = self.models.get_mut(model) else { return };
        if connected
            && !entry.background
            && entry.slot == Slot::None
            && entry.queued_live
            && !entry.queued_turn
            && entry.replica.has_unacknowledged()
        {
            entry.queued_turn = true;
            self.budget.turns.push_back(model.clone());
        }
    }

    fn go_online(&mut self, model: &ModelId) {
        if let Some(entry) = self.models.get_mut(model)
            && !entry.online
        {
            entry.online = true;
            self.model_event(model, ModelEvent::Online);
        }
    }

    fn go_offline(&mut self, model: &ModelId) {
        if let Some(entry) = self.models.get_mut(model)
            && entry.online
        {
            entry.online = false;
            self.model_event(model, ModelEvent::Offline);
        }
    }

    /// A model in sync ends its background sync: counted done; released if it was loaded
    /// only for it; an application's model on a turn stays open if a live slot is free,
    /// and is parked again otherwise.
    fn release_if_synced(&mut self, model: &ModelId) {
        let Some(entry) = self.models.get(model) else { return };
        if entry.link != Link::Live
            || entry.replica.has_unacknowledged()
            || entry.server_closes.is_some()
        {
            return;
        }
        let (background, slot) = (entry.background, entry.slot);
        if self.progress.done(model) {
            self.report_progress();
        }
        if background {
            self.take_model(model);
            self.model_event(model, ModelEvent::Released);
            self.schedule();
        } else if slot == Slot::Sync {
            self.set_slot(model, Slot::None);
            let live_free =
                self.budget.may_go_live(self.background_work()) && self.budget.parked.is_empty();
            if live_free {
                self.set_slot(model, Slot::Live);
            } else {
                self.park(model, false);
            }
            self.schedule();
        }
    }

    /// The connection is gone: everything waits offline; local changes keep being stored.
    fn went_offline(&mut self) {
        self.connection = Connection::Idle;
        for request in std::mem::take(&mut self.requests).into_values() {
            match request.purpose {
                Request::Call(call) => {
                    self.answers.push_back((call, Err(CallError::ConnectionLost)));
                }
                Request::JoinActivity(call, activity) => {
                    self.activity_joined(Some(call), activity, Err(CallError::ConnectionLost));
                }
                Request::History(ticket) => {
                    let lost = ErrorReply::new(ErrorCode::TIMEOUT, "the connection was lost");
                    self.history_answers.push_back((ticket, Err(lost)));
                }
                _ => {}
            }
        }
        self.acks.clear();
        self.transmit.clear();
        for (model, _) in std::mem::take(&mut self.opens) {
            let failure = OpenFailure::ConnectionLost;
            self.domain_event(DomainEvent::OpenFailed { model, failure });
        }
        // Background models go back to the store. The next connection syncs them, and the
        // ones still waiting, again.
        let background: Vec<ModelId> =
            self.models.iter().filter(|(_, m)| m.background).map(|(id, _)| id.clone()).collect();
        for model in background {
            if self.models.remove(&model).is_some_and(|entry| owes(&entry)) {
                self.sync_when_connected.insert(model.clone());
            }
            self.model_event(&model, ModelEvent::Released);
        }
        self.sync_when_connected.extend(self.sync_waiting.drain(..));
        self.sync_when_connected.append(&mut self.loading);
        self.loads.clear();
        self.progress.clear();
        self.open_queue.clear();
        self.budget.reset();
        // The next connection sends every creation and deletion still owed, and tries every
        // model again.
        self.asks.at = None;
        self.faulted.clear();
        for entry in self.models.values_mut() {
            entry.link = Link::Offline;
            entry.slot = Slot::None;
            entry.attached = false;
            entry.queued_live = false;
            entry.queued_turn = false;
            entry.server_closes = None;
        }
        let models: Vec<ModelId> = self.models.keys().cloned().collect();
        for model in &models {
            self.stop_sharing(model);
        }
        let models: Vec<ModelId> = self.models.keys().cloned().collect();
        for model in &models {
            self.go_offline(model);
        }
    }

    /// The store reported batch `id` (and every batch before it) durable.
    pub fn handle_durable(&mut self, id: BatchId) {
        let done: Vec<BatchId> = self.effects.range(..=id).map(|(id, _)| *id).collect();
        for batch in done {
            let effect = self.effects.remove(&batch).expect("listed");
            if let Some(deletion) = self.tombstones.get_mut(&effect.model)
                && deletion.batch == Some(batch)
            {
                deletion.batch = None;
                if self.is_connected() {
                    self.send_delete(&effect.model);
                }
            }
            let Some(entry) = self.models.get_mut(&effect.model) else {
                continue;
            };
            if let Some(seq) = effect.stored_seq {
                entry.replica.mark_durable(seq);
                let event = ModelEvent::Stored { seq };
                self.events.push_back(Event::Model { model: effect.model.clone(), event });
            }
            if let Some(seq) = effect.in_flight {
                entry.replica.mark_in_flight_stored(seq);
            }
            if entry.creation_batch == Some(batch) {
                entry.creation_batch = None;
                if self.is_connected() {
                    self.attach(&effect.model);
                }
            }
            self.pump(&effect.model);
        }
    }

    /// A message from the server, received at `now`.
    pub fn handle_message(&mut self, now: Time, message: ServerMessage) {
        if let Connection::Connected { last_heard, .. } = &mut self.connection {
            *last_heard = now;
        }
        match message {
            ServerMessage::Response { to, response } => {
                if let Some(request) = self.requests.remove(&to) {
                    self.answered(now, request, Ok(response));
                }
            }
            ServerMessage::Error { to: Some(to), error } => {
                if let Some(request) = self.requests.remove(&to) {
                    self.answered(now, request, Err(error));
                }
            }
            ServerMessage::Error { to: None, .. } => {}
            ServerMessage::Request { id, request } => self.server_request(id, request),
            ServerMessage::Push(push) => self.handle_push(now, push),
        }
        self.schedule();
    }

    /// The server asks: pings are answered, and so is the data of a model being opened
    /// with auto-create.
    fn server_request(&mut self, id: RequestId, request: ServerRequest) {
        let reply = match request {
            ServerRequest::Ping => {
                ClientMessage::Response { to: id, response: ClientResponse::Pong }
            }
            ServerRequest::AutoCreate { model } => {
                match self.opens.get_mut(&model).and_then(|o| o.auto_create.take()) {
                    Some((collection, data)) => ClientMessage::Response {
                        to: id,
                        response: ClientResponse::AutoCreate {
                            collection,
                            data,
                            permissions: None,
                        },
                    },
                    None => {
                        let message = "this client has no data to create the model with";
                        let error = ErrorReply::new(ErrorCode::MODEL_NOT_FOUND, message);
                        ClientMessage::Error { to: Some(id), error }
                    }
                }
            }
        };
        if self.is_connected() {
            self.transmit.push_back(reply);
        }
    }

    /// The answer to one of our requests.
    fn answered(
        &mut self,
        now: Time,
        request: Outstanding,
        answer: Result<ServerResponse, ErrorReply>,
    ) {
        let attached_before = request.attached_before;
        match request.purpose {
            Request::Resync(model) => self.resync_answered(now, model, answer, attached_before),
            Request::Sync { model, creates } => {
                self.sync_answered(now, model, creates, answer, attached_before)
            }
            Request::Create(model) => self.create_answered(now, model, answer),
            Request::Delete(model) => self.delete_answered(now, model, answer),
            Request::Open(model) => self.opened(now, model, answer, attached_before),
            Request::Call(call) => {
                let answer = answer.map_err(CallError::Refused);
                self.presence_answered(&answer);
                self.answers.push_back((call, answer));
            }
            Request::PresenceResync => self.presence_resynced(answer.map_err(CallError::Refused)),
            Request::JoinActivity(call, activity) => {
                self.activity_joined(Some(call), activity, answer.map_err(CallError::Refused));
            }
            Request::RejoinActivity(activity) => {
                self.activity_joined(None, activity, answer.map_err(CallError::Refused));
            }
            Request::ResyncComplete(model) => self.resync_complete_answered(model, answer),
            Request::History(ticket) => self.history_answers.push_back((ticket, answer)),
            Request::Other => {}
        }
    }

    fn resync_answered(
        &mut self,
        now: Time,
        model: ModelId,
        answer: Result<ServerResponse, ErrorReply>,
        attached_before: Option<usize>,
    ) {
        if let Err(error) = &answer
            && let Some(entry) = self.models.get_mut(&model)
            && entry.attached
        {
            // A refused resync leaves the model closed on this connection.
            entry.attached = false;
            self.budget.attached -= 1;
            if matches!(error.code, ErrorCode::OVERLOADED | ErrorCode::UNAVAILABLE) {
                let learned = (error.code == ErrorCode::OVERLOADED).then_some(attached_before);
                self.budget.refused(now, learned.flatten());
                return self.open_later(&model);
            }
        }
        match answer {
            Ok(ServerResponse::ResyncStarted { model: answered, in_flight_committed, .. })
                if answered == model =>
            {
                self.budget.succeeded();
                self.loaded_after_fault(&model);
                let Some(entry) = self.models.get_mut(&model) else { return };
                entry.link = Link::Replaying;
                if let Some(commit) = in_flight_committed {
                    entry.replica.in_flight_committed_at(commit.version);
                }
            }
            Ok(other) => {
                self.violation(&model, format!("unexpected answer to a resync: {other:?}"))
            }
            // A deleted model is as gone as one that never was.
            Err(error) if is_gone(&error) => self.gone(&model, error),
            Err(error) if error.code == ErrorCode::INTERNAL => {
                self.server_fault(now, &model, error)
            }
            Err(error) => self.violation(&model, format!("resync refused: {error}")),
        }
    }

    fn create_answered(
        &mut self,
        now: Time,
        model: ModelId,
        answer: Result<ServerResponse, ErrorReply>,
    ) {
        match answer {
            Ok(ServerResponse::ModelCreated { model: answered, created_at, .. })
                if answered == model =>
            {
                self.creation_confirmed(&model, created_at);
                self.done_if_nothing_owed(&model);
                self.request_slot(&model);
            }
            Ok(other) => {
                self.violation(&model, format!("unexpected answer to a creation: {other:?}"))
            }
            // Not refused: the server cannot take it now. Sent again after a backoff.
            Err(error) if is_transient(&error) => {
                if let Some(entry) = self.models.get_mut(&model) {
                    entry.link = Link::Offline;
                }
                self.go_offline(&model);
                self.asks.failed(now);
            }
            Err(error) => self.creation_refused(model, error),
        }
    }

    /// Sends again the creations the server could not take when last asked (the
    /// application's; background sync retries its own).
    fn send_creations(&mut self) {
        let waiting: Vec<ModelId> = self
            .models
            .iter()
            .filter(|(_, m)| m.creation.is_some() && m.link == Link::Offline && !m.background)
            .map(|(id, _)| id.clone())
            .collect();
        for model in waiting {
            self.attach(&model);
        }
    }

    /// The server has the model created here, since `created_at` by its clock: the store
    /// records both.
    fn creation_confirmed(&mut self, model: &ModelId, created_at: Timestamp) {
        self.asks.succeeded();
        let Some(entry) = self.models.get_mut(model) else { return };
        entry.creation = None;
        let collection = entry.replica.confirmed().collection.clone();
        let mut changes = vec![StoreChange::CreationConfirmed { collection }];
        if let Some(snapshot) = entry.replica.created_at_server(created_at) {
            changes.push(StoreChange::PutSnapshot(snapshot));
        }
        self.queue_batch(model, changes, None, None);
        self.domain_event(DomainEvent::Created { model: model.clone() });
    }

    /// The server refused to create the model. The local data stays, offline: the
    /// application decides what to do. A model loaded only to sync goes back to the store.
    fn creation_refused(&mut self, model: ModelId, error: ErrorReply) {
        let background = self.models.get(&model).is_some_and(|m| m.background);
        if background {
            self.take_model(&model);
        } else if let Some(entry) = self.models.get_mut(&model) {
            entry.link = Link::Refused;
            // Not at the server, so it holds no slot there: a sync turn or live slot kept
            // would never be given back, and background sync would wait for it forever.
            self.set_slot(&model, Slot::None);
        }
        self.sync_failed(&model);
        self.domain_event(DomainEvent::CreationRefused { model, error });
        self.schedule();
    }

    /// The answer to a `Sync` request: the model is created (if it asked) and resyncing,
    /// its submission on its way; or nothing happened and the server does not have it open.
    fn sync_answered(
        &mut self,
        now: Time,
        model: ModelId,
        creates: bool,
        answer: Result<ServerResponse, ErrorReply>,
        attached_before: Option<usize>,
    ) {
        let timeout = self.config.request_timeout;
        match answer {
            Ok(ServerResponse::ResyncStarted {
                model: answered,
                in_flight_committed,
                created_at,
                ..
            }) if answered == model => {
                if creates {
                    self.creation_confirmed(&model, created_at);
                }
                self.budget.succeeded();
                self.loaded_after_fault(&model);
                let Some(entry) = self.models.get_mut(&model) else { return };
                entry.link = Link::Replaying;
                if let Some(commit) = in_flight_committed {
                    entry.replica.in_flight_committed_at(commit.version);
                }
                if entry.replica.in_flight_sent() {
                    // Its answer follows the replay.
                    self.acks.insert(model, now + timeout);
                }
            }
            Ok(other) => self.violation(&model, format!("unexpected answer to a sync: {other:?}")),
            Err(error) => {
                if let Some(entry) = self.models.get_mut(&model) {
                    entry.replica.mark_in_flight_unsent();
                }
                self.server_closed(&model);
                if matches!(error.code, ErrorCode::OVERLOADED | ErrorCode::UNAVAILABLE) {
                    let learned = (error.code == ErrorCode::OVERLOADED).then_some(attached_before);
                    self.budget.refused(now, learned.flatten());
                    return self.open_later(&model);
                }
                if error.code == ErrorCode::INTERNAL {
                    // Whether or not it asked for a creation: the server did not decide it.
                    self.server_fault(now, &model, error);
                } else if creates {
                    self.creation_refused(model, error);
                } else if is_gone(&error) {
                    self.gone(&model, error);
                } else {
                    self.violation(&model, format!("sync refused: {error}"));
                }
            }
        }
    }

    /// The server closed on its side a model a `Sync` request attached.
    fn server_closed(&mut self, model: &ModelId) {
        let Some(entry) = self.models.get_mut(model) else { return };
        entry.server_closes = None;
        if entry.attached {
            entry.attached = false;
            self.budget.attached -= 1;
        }
    }

    /// After the server closed a model a `Sync` request attached: a background model goes on
    /// (another round if it still owes changes, else it is released); one the application
    /// took over meanwhile opens again.
    fn after_server_closed(&mut self, model: &ModelId) {
        let Some(entry) = self.models.get(model) else { return };
        if entry.background {
            return self.pump(model);
        }
        let reopen = entry.link == Link::Live && !entry.attached;
        self.done_if_nothing_owed(model);
        if reopen {
            self.start_resync(model);
        }
    }

    /// Counts as done a model background sync counted that owes the server nothing more,
    /// wherever it is now: the application may have taken it over, and its model may wait
    /// for a live slot for long.
    fn done_if_nothing_owed(&mut self, model: &ModelId) {
        let owes = self
            .models
            .get(model)
            .is_none_or(|m| m.creation.is_some() || m.replica.has_unacknowledged());
        if !owes && self.progress.done(model) {
            self.report_progress();
        }
    }

    fn delete_answered(
        &mut self,
        now: Time,
        model: ModelId,
        answer: Result<ServerResponse, ErrorReply>,
    ) {
        match answer {
            Ok(ServerResponse::Done) => self.deletion_confirmed(model),
            // Sent again after the next reconnection.
            Ok(_) => {}
            // Already gone: the same outcome.
            Err(error) if is_gone(&error) => self.deletion_confirmed(model),
            // A refusal about the server's state, not about the deletion: the tombstone
            // stays, and the deletion is asked again after a backoff.
            Err(error) if is_transient(&error) => self.asks.failed(now),
            Err(error) => {
                if let Some(Deletion { collection, creation, .. }) = self.tombstones.remove(&model)
                {
                    let change = StoreChange::Undelete { collection, creation };
                    self.queue_batch(&model, vec![change], None, None);
                    self.domain_event(DomainEvent::DeletionRefused { model, error });
                }
            }
        }
    }

    fn handle_push(&mut self, now: Time, push: ServerPush) {
        match push {
            // Acks, rejections and remote operations count only on a live model: one sent
            // before a resync was answered is covered by that resync (a committed
            // submission is found in its replay; a rejected one is sent again).
            ServerPush::Ack { model, .. }
            | ServerPush::SubmitRejected { model, .. }
            | ServerPush::RemoteOperation { model, .. }
                if self.models.get(&model).is_none_or(|m| m.link != Link::Live) => {}
            ServerPush::Ack { model, seq, version, timestamp } => {
                self.acks.remove(&model);
                self.faulted.remove(&model);
                let result = self.with_model(&model, |r| r.ack(seq, version, timestamp));
                if let Some(changes) = result {
                    self.confirmed_moved(&model, &changes);
                    if !changes.is_empty() {
                        self.model_event(&model, ModelEvent::Acknowledged { seq, version });
                        if self.models.get(&model).is_some_and(|m| !m.replica.has_unacknowledged())
                        {
                            self.model_event(&model, ModelEvent::Committed);
                        }
                    }
                    self.after_server_change(&model, changes);
                }
                if self.closes_on_answer(&model, seq) {
                    self.server_closed(&model);
                    self.after_server_closed(&model);
                }
            }
            ServerPush::SubmitRejected { model, seq, error } => {
                let closed = self.closes_on_answer(&model, seq);
                if closed {
                    self.server_closed(&model);
                }
                self.submit_rejected(now, model.clone(), seq, error);
                if closed {
                    self.after_server_closed(&model);
                }
            }
            ServerPush::RemoteOperation { model, operation } => {
                self.apply_remote(&model, operation);
            }
            ServerPush::ResyncPage { model, operations, authors, last } => {
                if self.models.get(&model).is_none_or(|m| m.link != Link::Replaying) {
                    return;
                }
                for author in &authors {
                    self.authors.remember(&author.session, &author.user);
                }
                // The page's server operations and the pending runs they rewrote are stored
                // in one batch, the runs once: the store is never left with pending
                // operations expressed against an older version than its own.
                let mut changes = Vec::new();
                for operation in operations {
                    if !self.apply_remote_with(&model, operation, Some(&mut changes)) {
                        return;
                    }
                }
                if let Some(entry) = self.models.get_mut(&model) {
                    changes.extend(entry.replica.take_pending_rewrite());
                }
                self.after_server_change(&model, changes);
                if last {
                    let entry = self.models.get_mut(&model).expect("checked");
                    entry.link = Link::Live;
                    let closes = entry.server_closes == Some(ServerCloses::AfterReplay);
                    // Only a model kept open says so: the answer carries who else has it
                    // open, which matters to no model synced in the background (or on a
                    // turn), and the server takes submissions on a resynced model without
                    // it. One message less per model synced.
                    if entry.slot == Slot::Live {
                        let request =
                            ClientRequest::ResyncComplete { model: model.clone(), open: true };
                        self.send(request, Request::ResyncComplete(model.clone()));
                    }
                    self.model_event(&model, ModelEvent::ResyncCompleted);
                    if closes {
                        self.server_closed(&model);
                        self.after_server_closed(&model);
                    } else {
                        self.pump(&model);
                    }
                }
            }
            ServerPush::OfflineUpdate { model, update } => self.offline_update(model, update),
            ServerPush::ModelForceClosed { model, code, message } => {
                self.gone(&model, ErrorReply::new(code, message));
            }
            ServerPush::CollaboratorOpened { model, collaborator } => {
                self.authors.remember(&collaborator.session, &collaborator.user);
                if let Some(entry) = self.models.get_mut(&model) {
                    entry.collaborators.insert(collaborator.session.clone(), collaborator.clone());
                }
                self.model_event(&model, ModelEvent::CollaboratorOpened(collaborator));
            }
            ServerPush::CollaboratorClosed { model, session, user } => {
                self.authors.remember(&session, &user);
                // Its references went with it.
                let mut unshared = Vec::new();
                if let Some(entry) = self.models.get_mut(&model) {
                    entry.collaborators.remove(&session);
                    unshared = entry.references.session_closed(&session);
                }
                self.model_event(&model, ModelEvent::CollaboratorClosed { session, user });
                for event in unshared {
                    self.model_event(&model, event);
                }
            }
            ServerPush::PermissionsChanged { model, permissions } => {
                if self.models.contains_key(&model) {
                    self.model_event(&model, ModelEvent::PermissionsChanged { permissions });
                }
            }
            ServerPush::Presence(presence) => self.presence_heard(presence),
            ServerPush::Activity { activity, change } => self.activity_changed(activity, change),
            ServerPush::RemoteReference { model, session, change } => {
                self.remote_reference(&model, session, change);
            }
            ServerPush::ReferenceRefused { model, reference, error } => {
                if self.models.contains_key(&model) {
                    self.model_event(&model, ModelEvent::ReferenceRefused { reference, error });
                }
            }
            // The connection's end after `SessionClosing` is handled as any lost connection.
            ServerPush::SessionClosing { .. } => {}
        }
    }

    /// The server refused the submission `seq` of `model`.
    fn submit_rejected(&mut self, now: Time, model: ModelId, seq: u64, error: ErrorReply) {
        let Some(entry) = self.models.get_mut(&model) else {
            return;
        };
        if entry.replica.in_flight_seq() != Some(seq) {
            return;
        }
        self.acks.remove(&model);
        // A refusal about the server's state, not about the change: the change is
        // kept, and resyncing tells whether it was committed and sends it again.
        if error.code == ErrorCode::INTERNAL {
            // The server failed on this model: it closes here and is tried again after its
            // own backoff, which a server failing the same submission each time makes grow;
            // other models go on meanwhile.
            self.close_at_server(&model);
            return self.fault(now, &model, error, true);
        }
        if is_transient(&error) {
            // Later, after the open-model backoff: it closes here and waits for a slot.
            self.budget.refused(now, None);
            self.open_later(&model);
            return;
        }
        if error.code == ErrorCode::MODEL_NOT_OPEN {
            if entry.attached {
                // The server no longer counts it as open here; the resync opens it again.
                entry.attached = false;
                self.budget.attached -= 1;
            }
            self.resume(&model);
            return;
        }
        if let Some((operations, changes)) = entry.replica.reject_in_flight() {
            let ended = entry.references.local_undone(entry.replica.local());
            self.ended(&model, ended);
            let rejected =
                DomainEvent::ChangesRejected { model: model.clone(), error: error.clone() };
            self.model_event(&model, ModelEvent::Rejected { operations, error });
            self.domain_event(rejected);
            self.queue_batch(&model, changes, None, None);
            self.pump(&model);
        }
    }

    /// Whether the answer to submission `seq` is the one after which the server closes
    /// `model` (a `Sync` request attached it).
    fn closes_on_answer(&self, model: &ModelId, seq: u64) -> bool {
        self.models.get(model).is_some_and(|m| m.server_closes == Some(ServerCloses::OnAnswer(seq)))
    }

    /// Tells a restarted engine the stored subscription set, each model with the version
    /// the store holds (`None`: not downloaded yet).
    pub fn add_subscriptions(&mut self, stored: Vec<(ModelId, Option<u64>)>) {
        self.subscriptions.extend(stored);
    }

    /// Adds models to the offline subscription set: the server brings each into the store
    /// and keeps it current while connected. `stored` gives the version the store holds of
    /// each (`None`: not downloaded).
    pub fn subscribe(&mut self, models: Vec<(ModelId, Option<u64>)>) {
        let mut added = Vec::new();
        for (model, version) in models {
            if self.tombstones.contains_key(&model) {
                continue;
            }
            if self.subscriptions.insert(model.clone(), version).is_none() {
                self.queue_batch(&model, vec![StoreChange::Subscribe], None, None);
                added.push(model);
            }
        }
        if self.is_connected() && !added.is_empty() {
            let subscribe = self.known_models(added);
            let request = ClientRequest::SubscribeOffline {
                subscribe,
                unsubscribe: Vec::new(),
                replace: false,
            };
            self.send(request, Request::Other);
        }
    }

    /// Removes models from the offline subscription set; what the store holds stays.
    pub fn unsubscribe(&mut self, models: Vec<ModelId>) {
        let removed: Vec<ModelId> =
            models.into_iter().filter(|m| self.subscriptions.remove(m).is_some()).collect();
        for model in &removed {
            self.queue_batch(model, vec![StoreChange::Unsubscribe], None, None);
        }
        if self.is_connected() && !removed.is_empty() {
            let request = ClientRequest::SubscribeOffline {
                subscribe: Vec::new(),
                unsubscribe: removed,
                replace: false,
            };
            self.send(request, Request::Other);
        }
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = &ModelId> {
        self.subscriptions.keys()
    }

    fn known_models(&self, models: Vec<ModelId>) -> Vec<KnownModel> {
        models
            .into_iter()
            .map(|model| {
                // A loaded model is further along than the store's version, never behind.
                let loaded = self.models.get(&model).map(|m| m.replica.confirmed_version());
                let version = loaded.or(self.subscriptions.get(&model).copied().flatten());
                KnownModel { model, version }
            })
            .collect()
    }

    /// Catch-up or a live update of a subscribed model. A loaded model ignores it (it syncs
    /// itself); a stored one is loaded a few at a time, resynced and released, so that its
    /// pending changes are transformed as for any reconnection; one never downloaded is
    /// stored from the snapshot.
    fn offline_update(&mut self, model: ModelId, update: OfflineUpdate) {
        let Some(known) = self.subscriptions.get(&model).copied() else { return };
        if self.tombstones.contains_key(&model) {
            return;
        }
        match update {
            OfflineUpdate::Deleted | OfflineUpdate::PermissionRevoked => {
                self.subscriptions.remove(&model);
                self.queue_batch(&model, vec![StoreChange::Unsubscribe], None, None);
                let error = ErrorReply::new(ErrorCode::MODEL_NOT_FOUND, "no longer available");
                self.model_event(&model, ModelEvent::Gone { error: error.clone() });
                self.domain_event(DomainEvent::ModelGone { model, error });
            }
            _ if self.models.contains_key(&model) => {}
            OfflineUpdate::Snapshot { snapshot, .. } if known.is_none() => {
                self.subscriptions.insert(model.clone(), Some(snapshot.version));
                self.queue_batch(&model, vec![StoreChange::Downloaded { snapshot }], None, None);
                self.domain_event(DomainEvent::Downloaded { model });
            }
            OfflineUpdate::Operations { .. } | OfflineUpdate::Snapshot { .. } => {
                if known.is_some()
                    && !self.sync_waiting.contains(&model)
                    && !self.loading.contains(&model)
                {
                    if !self.progress.put_back(&model) {
                        self.progress.add_waiting();
                    }
                    self.sync_waiting.push_back(model);
                    self.report_progress();
                    self.schedule();
                }
            }
        }
    }

    /// Tells a restarted engine which models the store holds as deleted here and not yet
    /// confirmed, so that they are not created again under the same id meanwhile; their
    /// deletion is sent once connected.
    pub fn add_tombstones(&mut self, stored: Vec<Tombstone>) {
        for Tombstone { model, collection, creation } in stored {
            self.tombstones.entry(model).or_insert(Deletion { collection, creation, batch: None });
        }
        if self.is_connected() {
            self.send_deletions();
        }
    }

    /// Asks the server to delete each model whose tombstone is durable, unless that is
    /// already asked.
    fn send_deletions(&mut self) {
        let durable: Vec<ModelId> = self
            .tombstones
            .iter()
            .filter(|(_, deletion)| deletion.batch.is_none())
            .map(|(model, _)| model.clone())
            .collect();
        for model in durable {
            self.send_delete(&model);
        }
    }

    /// Deletes a model here: it leaves memory at once and stays in the store as a
    /// tombstone; once that is durable and the engine is connected, the server is asked to
    /// delete it. Idempotent: deleting a model the server no longer has counts as done.
    ///
    /// `stored_creation` is the nonce of the model's creation the store holds unconfirmed,
    /// if any (for a model not in memory; one in memory knows its own). The deletion then
    /// names it, and the server deletes only the model that creation made: never another
    /// client's model created under the same id.
    pub fn delete_model(
        &mut self,
        model: ModelId,
        collection: CollectionId,
        stored_creation: Option<CreationNonce>,
    ) {
        let creation = match self.take_model(&model) {
            Some(entry) => entry.creation,
            None => stored_creation,
        };
        let position = self.sync_waiting.iter().position(|m| *m == model);
        if let Some(position) = position {
            self.sync_waiting.remove(position);
        }
        if self.progress.dropped(&model, position.is_some()) {
            self.report_progress();
        }
        let batch = self.next_batch_id();
        let mut changes = vec![StoreChange::MarkDeleted { collection: collection.clone() }];
        if self.subscriptions.remove(&model).is_some() {
            changes.push(StoreChange::Unsubscribe);
        }
        self.queue_batch(&model, changes, None, None);
        self.tombstones.insert(model, Deletion { collection, creation, batch: Some(batch) });
        self.schedule();
    }

    fn send_delete(&mut self, model: &ModelId) {
        let request = Request::Delete(model.clone());
        if self.requests.values().any(|r| r.purpose == request) {
            return;
        }
        let creation = self.tombstones.get(model).and_then(|deletion| deletion.creation);
        self.send(ClientRequest::DeleteModel { model: model.clone(), creation }, request);
    }

    fn deletion_confirmed(&mut self, model: ModelId) {
        self.asks.succeeded();
        if self.tombstones.remove(&model).is_some() {
            self.queue_batch(&model, vec![StoreChange::Forget], None, None);
            self.domain_event(DomainEvent::Deleted { model });
        }
    }

    /// The server no longer serves `model`: it stays here, offline; one loaded only to sync
    /// goes back to the store.
    fn gone(&mut self, model: &ModelId, error: ErrorReply) {
        self.faulted.remove(model);
        if self.refused_here(model) {
            self.model_event(model, ModelEvent::Gone { error: error.clone() });
            self.domain_event(DomainEvent::ModelGone { model: model.clone(), error });
        }
    }

    /// The server failed serving the model (`internal`: its store failed, or holds a
    /// damaged record of it). Not a protocol violation: the copy here is consistent, so an
    /// application's model stays loaded, offline, and a background one goes back to the
    /// store; either is tried again after a backoff, and on the next connection.
    fn server_fault(&mut self, now: Time, model: &ModelId, error: ErrorReply) {
        self.fault(now, model, error, false);
    }

    /// [`Self::server_fault`] of a load, or of a `submission`.
    fn fault(&mut self, now: Time, model: &ModelId, error: ErrorReply, submission: bool) {
        let counted = self.progress.counts(model);
        if self.refused_here(model) {
            self.go_offline(model);
            let initial = self.config.initial_backoff;
            let max = self.config.max_backoff.saturating_mul(FAULT_BACKOFF_GROWTH);
            let fault = self.faulted.entry(model.clone()).or_insert_with(|| Fault {
                retry: Backoff::new(initial, max),
                counted,
                submission,
            });
            fault.counted = counted;
            fault.submission |= submission;
            fault.retry.failed(now);
            self.domain_event(DomainEvent::ServerFault { model: model.clone(), error });
        }
    }

    /// The server loaded a model it had failed: a failed load is over; a failed submission
    /// is over once a submission is acknowledged.
    fn loaded_after_fault(&mut self, model: &ModelId) {
        if self.faulted.get(model).is_some_and(|fault| !fault.submission) {
            self.faulted.remove(model);
        }
    }

    /// Tries again the faulted models whose backoff is over: an application's model
    /// resyncs when it gets a slot, one synced in the background waits for its turn again.
    /// Each keeps its backoff until its fault is over.
    fn retry_faults(&mut self, now: Time) {
        let due: Vec<(ModelId, bool)> = self
            .faulted
            .iter_mut()
            .filter_map(|(model, fault)| {
                fault.retry.take_due(now).then(|| (model.clone(), fault.counted))
            })
            .collect();
        if due.is_empty() {
            return;
        }
        for (model, counted) in due {
            match self.models.get_mut(&model) {
                Some(entry) if entry.link == Link::Refused => {
                    entry.link = Link::Offline;
                    if counted {
                        self.progress.retry(Some(model.clone()));
                        self.report_progress();
                    }
                    self.attach(&model);
                }
                // Syncing again already (the application opened it, or closed it owing
                // changes), or deleted here meanwhile.
                Some(_) => {}
                None if self.tombstones.contains_key(&model)
                    || self.sync_waiting.contains(&model)
                    || self.loading.contains(&model) => {}
                None => {
                    if counted {
                        self.progress.retry(None);
                    } else {
                        self.progress.add_waiting();
                    }
                    self.sync_waiting.push_back(model);
                    self.report_progress();
                }
            }
        }
        self.schedule();
    }

    /// Takes `model` offline on this connection, the server having refused it (after a
    /// fault it is tried again once its backoff is over); false if it is not loaded.
    fn refused_here(&mut self, model: &ModelId) -> bool {
        // A resync sent before the server said so may still be answered, even refused for
        // load: that answer is about a model no longer served.
        self.forget_answers(model);
        self.stop_sharing(model);
        let Some(entry) = self.models.get_mut(model) else { return false };
        entry.link = Link::Refused;
        if entry.attached {
            // The server closed it on its side.
            entry.attached = false;
            self.budget.attached -= 1;
        }
        let background = entry.background;
        self.set_slot(model, Slot::None);
        if background {
            self.models.remove(model);
        }
        self.sync_failed(model);
        true
    }

    /// Applies a committed operation; false if the model went offline over it.
    fn apply_remote(
        &mut self,
        model: &ModelId,
        operation: concord_protocol::CommittedOperation,
    ) -> bool {
        self.apply_remote_with(model, operation, None)
    }

    /// [`Self::apply_remote`]; with `page`, its store changes are added there, without the
    /// pending runs it rewrote (the caller adds them once, after the last operation).
    fn apply_remote_with(
        &mut self,
        model: &ModelId,
        operation: concord_protocol::CommittedOperation,
        mut page: Option<&mut Vec<StoreChange>>,
    ) -> bool {
        let Some(entry) = self.models.get_mut(model) else {
            return false;
        };
        let author = operation.author.clone();
        let user = entry
            .collaborators
            .get(&author)
            .map(|c| c.user.clone())
            .or_else(|| self.authors.user(&author).cloned());
        let committed = operation.operation.clone();
        let result = match page {
            Some(_) => entry.replica.remote_deferred(operation),
            None => entry.replica.remote(operation),
        };
        let mut ended = Vec::new();
        if let Ok((applied, _)) = &result {
            entry.references.confirmed_moved(&committed, &entry.replica.confirmed().data);
            if let Some(applied) = applied {
                let local = entry.replica.local();
                ended = entry.references.local_view_moved(&applied.operation, local);
            }
        }
        self.ended(model, ended);
        let Some(entry) = self.models.get_mut(model) else { return false };
        match result {
            Ok((None, changes)) => {
                // The replay held our own submission: that was its ack.
                if !entry.replica.has_unacknowledged() {
                    self.model_event(model, ModelEvent::Committed);
                }
                match page.as_mut() {
                    Some(page) => page.extend(changes),
                    None => self.after_server_change(model, changes),
                }
                true
            }
            Ok((applied, changes)) => {
                if let Some(applied) = applied {
                    let author = Some((author, user));
                    let changes = ModelEvent::changes(&applied.operation, &applied.applied, author);
                    for event in changes {
                        self.model_event(model, event);
                    }
                    if !applied.neutralised.is_empty() {
                        let seqs = applied.neutralised;
                        self.model_event(model, ModelEvent::Neutralised { seqs });
                    }
                }
                match page {
                    Some(page) => page.extend(changes),
                    None => self.after_server_change(model, changes),
                }
                true
            }
            Err(error) => {
                self.violation(model, error.to_string());
                false
            }
        }
    }

    fn with_model<T>(
        &mut self,
        model: &ModelId,
        f: impl FnOnce(&mut ModelReplica) -> Result<T, ReplicaError>,
    ) -> Option<T> {
        let entry = self.models.get_mut(model)?;
        match f(&mut entry.replica) {
            Ok(value) => Some(value),
            Err(error) => {
                self.violation(model, error.to_string());
                None
            }
        }
    }

    fn after_server_change(&mut self, model: &ModelId, mut changes: Vec<StoreChange>) {
        if let Some(entry) = self.models.get_mut(model)
            && let Some(snapshot) = entry.replica.compact(self.config.compact_every)
        {
            changes.push(snapshot);
        }
        if !changes.is_empty() {
            self.queue_batch(model, changes, None, None);
        }
        self.pump(model);
        self.publish_dirty(model);
    }

    /// The server broke the protocol for `model`. Its replica may have been changed half-way,
    /// so it leaves memory (and the server); the store, changed only by whole batches, still
    /// holds a consistent state to reload it from.
    fn violation(&mut self, model: &ModelId, error: String) {
        self.take_model(model);
        self.sync_failed(model);
        self.domain_event(DomainEvent::ProtocolViolation { model: model.clone(), error });
    }

    /// Creates a model here, at version 0 of `data`, before the server knows it (offline or
    /// not). Once connected the engine asks the server to create it — idempotent by
    /// `nonce` — and then syncs it like any other.
    pub fn create_model(
        &mut self,
        model: ModelId,
        collection: CollectionId,
        data: Document,
        nonce: CreationNonce,
        now: Timestamp,
    ) -> Result<(), EngineError> {
        if self.models.contains_key(&model) {
            return Err(EngineError::AlreadyLoaded(model));
        }
        if self.tombstones.contains_key(&model) {
            return Err(EngineError::DeletionPending(model));
        }
        let snapshot =
            ModelSnapshot { collection, version: 0, created_at: now, modified_at: now, data };
        // Subscribed to this id but never downloaded: the store now holds this model at 0.
        if let Some(known @ None) = self.subscriptions.get_mut(&model) {
            *known = Some(0);
        }
        let batch = self.next_batch_id();
        let created = StoreChange::Created { snapshot: snapshot.clone(), nonce };
        self.queue_batch(&model, vec![created], None, None);
        let mut entry = self.entry(ModelReplica::new(snapshot).into(), false);
        entry.creation = Some(nonce);
        entry.creation_batch = Some(batch);
        self.models.insert(model, entry);
        Ok(())
    }

    /// Brings a model on line: creates it at the server first when that is still owed.
    fn attach(&mut self, model: &ModelId) {
        let Some(entry) = self.models.get_mut(model) else { return };
        if entry.background && entry.creation_batch.is_none() {
            return self.start_sync(model);
        }
        let Some(nonce) = entry.creation else {
            self.request_slot(model);
            return;
        };
        if entry.creation_batch.is_some() {
            return; // attached once the creation is durable
        }
        // Creating takes no slot: the server does not count a creation as open.
        entry.link = Link::Creating;
        self.go_online(model);
        let Some(entry) = self.models.get_mut(model) else { return };
        let snapshot = entry.replica.confirmed();
        let request = ClientRequest::CreateModel {
            model: model.clone(),
            collection: snapshot.collection.clone(),
            data: snapshot.data.clone(),
            nonce,
            permissions: None,
        };
        self.send(request, Request::Create(model.clone()));
    }

    /// A model ready to resync: at once if it holds a slot (a background model holds one
    /// from its load), otherwise it waits for a live slot (and, with changes to push, for
    /// a turn), whichever comes first.
    fn request_slot(&mut self, model: &ModelId) {
        let Some(entry) = self.models.get_mut(model) else { return };
        if entry.slot != Slot::None {
            return self.start_resync(model);
        }
        if !entry.queued_live {
            entry.queued_live = true;
            self.budget.parked.push_back(model.clone());
        }
        self.wants_turn(model);
        self.schedule();
    }

    /// The server refused to open the model for now: it closes here and waits for a slot
    /// again, first in line — a background model back in the store, an application's
    /// model parked — until the budget's backoff has passed.
    fn open_later(&mut self, model: &ModelId) {
        let Some(entry) = self.models.get(model) else { return };
        if entry.background {
            self.take_model(model);
            self.sync_waiting.push_front(model.clone());
        } else if entry.creation.is_some() {
            // The application took it over from background sync before the server created
            // it. Parked, it would wait for a slot that a model not yet created is never
            // given; creating takes no slot, and once created it asks for one.
            self.set_slot(model, Slot::None);
            self.attach(model);
        } else {
            self.park(model, true);
        }
    }

    /// Resyncs a model again after a transient refusal: a background model by another
    /// `Sync` request.
    fn resume(&mut self, model: &ModelId) {
        if self.models.get(model).is_some_and(|m| m.background && !m.attached) {
            self.start_sync(model);
        } else {
            self.start_resync(model);
        }
    }

    /// Background sync of a model in one `Sync` request: its creation if still owed, its
    /// resync and its next submission, after which the server closes it (one request per
    /// model instead of a creation, a resync, a submission and a close). The submission's
    /// boundary is made durable first; a model that owes nothing is released.
    fn start_sync(&mut self, model: &ModelId) {
        self.go_online(model);
        let (max_parts, max_bytes) = (self.config.max_batch_parts, self.config.max_batch_bytes);
        let Some(entry) = self.models.get_mut(model) else { return };
        entry.replica.mark_in_flight_unsent();
        self.acks.remove(model);
        if entry.replica.in_flight_seq().is_none()
            && let Some((_, boundary)) = entry.replica.take_submission(max_parts, max_bytes)
        {
            entry.link = Link::Preparing;
            let seq = entry.replica.in_flight_seq();
            self.queue_batch(model, vec![boundary], None, seq);
            return;
        }
        if entry.replica.in_flight_seq().is_some() && entry.replica.submission().is_none() {
            entry.link = Link::Preparing; // sent once its boundary is durable
            return;
        }
        if entry.creation.is_none() && !entry.replica.has_unacknowledged() {
            entry.link = Link::Live;
            return self.pump(model);
        }
        self.send_sync(model);
    }

    /// Sends a background model's `Sync` request, with its submission if it has one (its
    /// boundary durable).
    fn send_sync(&mut self, model: &ModelId) {
        let replica = self.replica_id;
        let Some(entry) = self.models.get_mut(model) else { return };
        let submission = entry.replica.submission().map(|s| {
            Box::new(SyncSubmission {
                replica,
                first_seq: s.first_seq,
                seq: s.seq,
                base_version: s.base_version,
                operation: s.operation,
            })
        });
        entry.server_closes = Some(match &submission {
            Some(s) => ServerCloses::OnAnswer(s.seq),
            None => ServerCloses::AfterReplay,
        });
        if submission.is_some() {
            entry.replica.mark_in_flight_sent();
        }
        let confirmed = entry.replica.confirmed();
        let create = entry.creation.map(|nonce| {
            Box::new(NewModel {
                collection: confirmed.collection.clone(),
                data: confirmed.data.clone(),
                nonce,
                permissions: None,
            })
        });
        let creates = create.is_some();
        let request = ClientRequest::Sync {
            model: model.clone(),
            create,
            known_version: entry.replica.confirmed_version(),
            in_flight: entry.replica.in_flight_seq().map(|seq| InFlight { replica, seq }),
            submission,
        };
        entry.link = Link::Resyncing;
        entry.attached = true;
        self.send_attaching(request, Request::Sync { model: model.clone(), creates });
        self.model_event(model, ModelEvent::ResyncStarted);
    }

    /// Sends a resync; the model holds a slot. It attaches the model at the server unless
    /// it is attached already (a resync on a live model).
    fn start_resync(&mut self, model: &ModelId) {
        self.go_online(model);
        let Some(entry) = self.models.get_mut(model) else {
            return;
        };
        entry.link = Link::Resyncing;
        entry.sharing = false;
        entry.replica.mark_in_flight_unsent();
        self.acks.remove(model);
        let in_flight =
            entry.replica.in_flight_seq().map(|seq| InFlight { replica: self.replica_id, seq });
        let known_version = entry.replica.confirmed_version();
        let request = ClientRequest::Resync { model: model.clone(), known_version, in_flight };
        if entry.attached {
            self.send(request, Request::Resync(model.clone()));
        } else {
            entry.attached = true;
            self.send_attaching(request, Request::Resync(model.clone()));
        }
        self.model_event(model, ModelEvent::ResyncStarted);
    }

    /// Sends what the model may send — the in-flight submission once its boundary is
    /// durable, or a new one from durable pending operations — or releases a background
    /// model with nothing left to send.
    fn pump(&mut self, model: &ModelId) {
        self.send_next(model);
        self.release_if_synced(model);
    }

    fn send_next(&mut self, model: &ModelId) {
        let connected = self.is_connected();
        let Some(entry) = self.models.get_mut(model) else {
            return;
        };
        if !connected || entry.server_closes.is_some() {
            return;
        }
        if entry.link == Link::Preparing {
            if entry.replica.submission().is_some() {
                self.send_sync(model);
            }
            return;
        }
        if entry.link != Link::Live {
            return;
        }
        if entry.background && !entry.attached {
            // Closed by the server after its last `Sync`: more to push takes another.
            if entry.replica.has_unacknowledged() {
                self.start_sync(model);
            }
            return;
        }
        if entry.replica.in_flight_seq().is_none()
            && let Some((_, boundary)) = entry
                .replica
                .take_submission(self.config.max_batch_parts, self.config.max_batch_bytes)
        {
            let seq = entry.replica.in_flight_seq();
            self.queue_batch(model, vec![boundary], None, seq);
            return;
        }
        // Resend after a resync, or send once the boundary became durable.
        let entry = self.models.get_mut(model).expect("present");
        if let Some(submission) = entry.replica.submission()
            && !entry.replica.in_flight_sent()
        {
            entry.replica.mark_in_flight_sent();
            self.transmit.push_back(ClientMessage::Notice(ClientNotice::Submit {
                model: model.clone(),
                replica: self.replica_id,
                first_seq: submission.first_seq,
                seq: submission.seq,
                base_version: submission.base_version,
                operation: submission.operation,
            }));
        }
    }

    fn next_batch_id(&self) -> BatchId {
        BatchId(self.next_batch)
    }

    fn queue_batch(
        &mut self,
        model: &ModelId,
        changes: Vec<StoreChange>,
        stored_seq: Option<u64>,
        in_flight: Option<u64>,
    ) {
        let id = BatchId(self.next_batch);
        self.next_batch += 1;
        self.effects.insert(id, BatchEffect { model: model.clone(), stored_seq, in_flight });
        self.storage.push_back(StorageBatch { id, model: model.clone(), changes });
    }

    /// Queues a request with a fresh id, remembering what it is for.
    fn send(&mut self, request: ClientRequest, purpose: Request) {
        self.send_counted(request, purpose, None);
    }

    /// Queues a request that attaches one more model at the server.
    fn send_attaching(&mut self, request: ClientRequest, purpose: Request) {
        let before = self.budget.attached;
        self.budget.attached += 1;
        self.send_counted(request, purpose, Some(before));
    }

    fn send_counted(
        &mut self,
        request: ClientRequest,
        purpose: Request,
        attached_before: Option<usize>,
    ) {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        self.requests.insert(id, Outstanding { purpose, deadline: None, attached_before });
        self.transmit.push_back(ClientMessage::Request { id, request });
    }

    fn model_event(&mut self, model: &ModelId, mut event: ModelEvent) {
        // Another session's reference names its user too, as far as it is known.
        if let ModelEvent::RemoteReference { session, user: user @ None, .. } = &mut event {
            *user = self
                .models
                .get(model)
                .and_then(|entry| entry.collaborators.get(session))
                .map(|c| c.user.clone())
                .or_else(|| self.authors.user(session).cloned());
        }
        self.events.push_back(Event::Model { model: model.clone(), event });
    }

    fn domain_event(&mut self, event: DomainEvent) {
        self.events.push_back(Event::Domain(event));
    }

    pub fn poll_storage(&mut self) -> Option<StorageBatch> {
        self.storage.pop_front()
    }

    /// The next message to send. `now` is when it leaves: its answer is due
    /// [`EngineConfig::request_timeout`] later.
    pub fn poll_transmit(&mut self, now: Time) -> Option<ClientMessage> {
        let message = self.transmit.pop_front()?;
        let deadline = now + self.config.request_timeout;
        match &message {
            ClientMessage::Request { id, .. } => {
                if let Some(request) = self.requests.get_mut(id) {
                    request.deadline.get_or_insert(deadline);
                }
            }
            ClientMessage::Notice(ClientNotice::Submit { model, .. }) => {
                self.acks.insert(model.clone(), deadline);
            }
            ClientMessage::Response { .. }
            | ClientMessage::Error { .. }
            | ClientMessage::Notice(_) => {}
        }
        Some(message)
    }

    /// Sends a request of the application's own (permissions, presence, activities) now,
    /// or fails at once with [`CallError::Offline`]: such requests are never queued for a
    /// later connection. The answer comes from [`ClientEngine::poll_answer`] under the
    /// returned id — exactly one per call, [`CallError::ConnectionLost`] if the connection
    /// ends first.
    pub fn call(&mut self, request: ClientRequest) -> Result<CallId, CallError> {
        self.call_for(request, Request::Call)
    }

    /// A call whose answer the engine looks at first (`purpose` names it).
    fn call_for(
        &mut self,
        request: ClientRequest,
        purpose: impl FnOnce(CallId) -> Request,
    ) -> Result<CallId, CallError> {
        if !self.is_connected() {
            return Err(CallError::Offline);
        }
        let call = CallId(self.next_call);
        self.next_call += 1;
        self.send(request, purpose(call));
        Ok(call)
    }

    /// The next answer to a [`ClientEngine::call`]; drain it with the events.
    pub fn poll_answer(&mut self) -> Option<(CallId, Result<ServerResponse, CallError>)> {
        self.answers.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Asks the server about `model`'s history (read-only, nothing is stored); the answer
    /// comes from [`ClientEngine::poll_history`]. Needs the connection.
    pub fn request_history(
        &mut self,
        model: ModelId,
        query: HistoryQuery,
    ) -> Result<HistoryTicket, EngineError> {
        if !self.is_connected() {
            return Err(EngineError::Offline(model));
        }
        let ticket = HistoryTicket(self.next_history);
        self.next_history += 1;
        let request = match query {
            HistoryQuery::Open => ClientRequest::HistoryOpen { model },
            HistoryQuery::Fetch { start, checkpoint, max_operations, max_bytes } => {
                ClientRequest::HistoryFetch { model, start, checkpoint, max_operations, max_bytes }
            }
        };
        self.send(request, Request::History(ticket));
        Ok(ticket)
    }

    /// The next answer to a history request.
    pub fn poll_history(&mut self) -> Option<(HistoryTicket, HistoryAnswer)> {
        self.history_answers.pop_front()
    }

    /// A stored model to load for background sync; answer with
    /// [`ClientEngine::handle_loaded`].
    pub fn poll_load(&mut self) -> Option<ModelId> {
        self.loads.pop_front()
    }
}

/// Whether the server's refusal says the model is not there (deleted counts as never was).
fn is_gone(error: &ErrorReply) -> bool {
    matches!(error.code, ErrorCode::MODEL_NOT_FOUND | ErrorCode::MODEL_DELETED)
}

/// A refusal about the server's state (busy, or its store failing), not about the request:
/// the same request may succeed later.
fn is_transient(error: &ErrorReply) -> bool {
    matches!(error.code, ErrorCode::OVERLOADED | ErrorCode::UNAVAILABLE | ErrorCode::INTERNAL)
}

/// The next element counter of `replica` in `document`: past every id it minted there.
fn next_counter_for(document: &Document, replica: ReplicaId) -> u64 {
    document
        .ids()
        .filter(|id: &ElementId| id.replica == replica)
        .map(|id| id.counter + 1)
        .max()
        .unwrap_or(0)
}

/// Whether the server has yet to take something of the model: changes, or its creation.
fn owes(model: &Model) -> bool {
    model.replica.has_unacknowledged() || model.creation.is_some()
}

/// Whether a model still waits for the ack of a submission it sent.
fn awaits_ack(model: &Model) -> bool {
    model.link == Link::Live && model.replica.in_flight_sent()
}
