//! The task behind a [`Domain`](crate::Domain): it owns the sync engine, the offline store
//! and the WebSocket, and nothing else touches them. Sockets, store, clock and application
//! commands: the protocol and its timing are the engine's. Application calls arrive as
//! [`Command`]s; after each command or frame (with the edits, or frames, already queued) or
//! engine deadline it drains the engine in its documented order — storage (all queued
//! batches in one group commit), transmit, events, connection actions, loads — then sleeps
//! until the next frame, command or deadline.
//!
//! Events go out on broadcast channels, so a slow consumer loses old events instead of
//! slowing the connection down.

use std::collections::{HashMap, HashSet};

use futures_util::FutureExt;

use concord_ot::{Document, ElementId, IdGenerator, Operation, ReplicaId};
use concord_protocol::{
    ActivityChange, ActivityId, ActivityRequest, Auth, ClientRequest, CollectionId, CreationNonce,
    ErrorCode, ModelId, OfflineUpdate, Participant, PresenceState, ServerMessage, ServerPush,
    ServerResponse, Session, SessionId, Timestamp, UserId, UserPresence,
};
use concord_storage::{Batch, ModelSummary, Mutation, OfflineStore, StorageError, StoreKey};
use concord_sync::host::HistoryQuery;
use concord_sync::store::Restored;
use concord_sync::{
    Action, CallId, ClientEngine, ConnectionState, DisconnectReason, DomainEvent, EngineError,
    Event, HistoryTicket, ModelEvent, ModelReplica, OpenFailure, store,
};
use tokio::sync::{broadcast, oneshot, watch};

use crate::domain::{DomainOptions, StoredModel};
use crate::error::ClientError;
use crate::events::ModelChannel;
use crate::model::Watermarks;
use crate::query::{LocalModel, QueryResult, evaluate_local};
use crate::rt::{self, Clock, Instant};
use crate::socket::{self, Socket};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// The most frames handled before the engine is drained (commands and timers wait no
/// longer than that many).
const FRAMES_PER_TURN: usize = 256;

/// The most edits (discrete operations) those frames may carry beyond the first frame:
/// resync and catch-up pages hold thousands each, and what one turn holds — the
/// operations, their store batch, one event per edit — stays this size however many
/// operations a reconnect brings.
const EDITS_PER_TURN: usize = 4096;

/// The most queued edits handled before the engine is drained: the edits of a burst
/// (keystrokes, or other tabs' edits queued behind a commit) share one group commit.
const COMMANDS_PER_TURN: usize = 256;

/// Where the domain's events go: domain events, presence, activities.
pub(crate) type EventChannels = (
    broadcast::Sender<DomainEvent>,
    broadcast::Sender<UserPresence>,
    broadcast::Sender<(ActivityId, ActivityChange)>,
);

/// Builds a local change against the model's current local view.
pub(crate) type Build =
    Box<dyn FnOnce(&Document, &mut IdGenerator) -> Result<Operation, ClientError> + Send>;

/// Builds an application request (given the replica id that mints element ids).
pub(crate) type BuildRequest =
    Box<dyn FnOnce(ReplicaId) -> Result<ClientRequest, ClientError> + Send>;

/// Reads the model's local view; it replies through what it captured.
pub(crate) type Read = Box<dyn FnOnce(&ModelReplica) + Send>;

/// Runs against the engine, for a model it has loaded; it replies through what it captured.
pub(crate) type EngineCall = Box<dyn FnOnce(&mut ClientEngine) + Send>;

/// What to create when opening a model the server does not have.
#[derive(Debug)]
pub(crate) struct AutoCreate {
    pub(crate) collection: CollectionId,
    pub(crate) data: serde_json::Value,
}

/// An open model as the application holds it.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) collection: CollectionId,
    pub(crate) root: ElementId,
    pub(crate) events: ModelChannel<ModelEvent>,
    pub(crate) watermarks: watch::Receiver<Watermarks>,
}

/// What the application does with presence.
#[derive(Debug)]
pub(crate) enum PresenceOp {
    /// Offline it is kept and published on the next connection (answered `Done` at once).
    Set(PresenceState),
    Remove(Option<Vec<String>>),
    Follow(Vec<UserId>),
    Unfollow(Vec<UserId>),
}

/// What the application does with activities.
#[derive(Debug)]
pub(crate) enum ActivityOp {
    /// Needs the connection.
    Join(ActivityId, PresenceState),
    Leave(ActivityId),
    /// Offline it is kept for the next join (answered `Done` at once).
    SetState(ActivityId, PresenceState),
    RemoveState(ActivityId, Option<Vec<String>>),
    /// Needs the connection.
    Remove(ActivityId, SessionId),
}

pub(crate) enum Command {
    Connect {
        auth: Auth,
        reply: Reply<Session>,
    },
    InitializeOffline {
        user: String,
        reply: Reply<()>,
    },
    Disconnect {
        reply: Reply<()>,
    },
    Open {
        model: ModelId,
        auto_create: Option<AutoCreate>,
        reply: Reply<Opened>,
    },
    Create {
        model: ModelId,
        collection: CollectionId,
        data: serde_json::Value,
        reply: Reply<()>,
    },
    Remove {
        model: ModelId,
        reply: Reply<()>,
    },
    Subscribe {
        models: Vec<ModelId>,
        reply: Reply<()>,
    },
    Unsubscribe {
        models: Vec<ModelId>,
        reply: Reply<()>,
    },
    Subscriptions {
        reply: Reply<Vec<ModelId>>,
    },
    StoredModels {
        reply: Reply<Vec<StoredModel>>,
    },
    /// Keeps identities the server showed in the store.
    CacheIdentities {
        identities: Vec<concord_protocol::Identity>,
        reply: Reply<()>,
    },
    /// The identities the store kept.
    CachedIdentities {
        reply: Reply<Vec<concord_protocol::Identity>>,
    },
    /// A query answered by the offline store.
    QueryStore {
        query: Box<concord_query::Query>,
        reply: Reply<QueryResult>,
    },
    Edit {
        model: ModelId,
        build: Build,
        reply: Reply<u64>,
    },
    Read {
        model: ModelId,
        read: Read,
    },
    /// Shared references: what the engine keeps and sends of them.
    Engine {
        model: ModelId,
        call: EngineCall,
    },
    Close {
        model: ModelId,
    },
    /// A request of the application's own, sent now or refused as offline.
    Call {
        request: BuildRequest,
        reply: Reply<ServerResponse>,
    },
    /// A presence change or follow; see [`PresenceOp`].
    Presence {
        op: PresenceOp,
        reply: Reply<ServerResponse>,
    },
    /// An activity change; see [`ActivityOp`].
    Activity {
        op: ActivityOp,
        reply: Reply<ServerResponse>,
    },
    Participants {
        activity: ActivityId,
        reply: Reply<Vec<Participant>>,
    },
    /// A history request at the server (read-only; nothing is stored).
    History {
        model: ModelId,
        query: HistoryQuery,
        reply: Reply<ServerResponse>,
    },
    /// Stop: close the connection and the store, then answer.
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A model the application has open. What a handle costs beside the model itself: this
/// (a watch channel and a few words), the handle's own few words, and once someone reads
/// its events, their channel (`events::MODEL_EVENTS` slots).
struct OpenModel {
    events: ModelChannel<ModelEvent>,
    watermarks: watch::Sender<Watermarks>,
    /// Handles the application holds; the model leaves memory when the last one closes
    /// (changes not yet acknowledged are synced in the background, from the store).
    handles: usize,
    collection: CollectionId,
}

pub(crate) struct Driver {
    /// The servers to connect to, in order of preference (the nodes of a cluster); the
    /// first names the offline store.
    urls: Vec<String>,
    /// The one connected to, or tried next.
    current: usize,
    /// Servers whose last connection failed or broke (cleared when one succeeds): an owner
    /// redirect never leads to one of them.
    suspect: Vec<bool>,
    /// The connection in `socket` was reached by following an owner redirect: it follows
    /// none itself, so that owners of different models never bounce the client around.
    redirected: bool,
    /// A listed server that a node named as the owner of a model this one cannot serve.
    redirect: Option<usize>,
    options: DomainOptions,
    state: watch::Sender<ConnectionState>,
    domain_events: broadcast::Sender<DomainEvent>,
    presence_events: broadcast::Sender<UserPresence>,
    activity_events: broadcast::Sender<(ActivityId, ActivityChange)>,
    user: Option<String>,
    store: Option<Box<dyn OfflineStore>>,
    engine: Option<ClientEngine>,
    socket: Option<Socket>,
    /// The session of the connection in `socket`.
    session: Option<Session>,
    /// Application connects waiting for the outcome of the engine's next attempt.
    connecting: Vec<Reply<Session>>,
    clock: Clock,
    open: HashMap<ModelId, OpenModel>,
    /// Models in the engine because the application opened or created them.
    loaded_for_app: HashSet<ModelId>,
    /// Application opens waiting for the engine's answer from the server.
    opening: HashMap<ModelId, Vec<Reply<Opened>>>,
    /// Application calls waiting for the server's answer.
    calls: HashMap<CallId, Reply<ServerResponse>>,
    /// History requests waiting for the server's answer.
    history: HashMap<HistoryTicket, Reply<ServerResponse>>,
    /// Set when the store failed: the domain stops.
    failed: Option<ClientError>,
}

impl Driver {
    pub(crate) fn new(
        urls: Vec<String>,
        options: DomainOptions,
        state: watch::Sender<ConnectionState>,
        (domain_events, presence_events, activity_events): EventChannels,
    ) -> Driver {
        let suspect = vec![false; urls.len()];
        Driver {
            urls,
            current: 0,
            suspect,
            redirected: false,
            redirect: None,
            options,
            state,
            domain_events,
            presence_events,
            activity_events,
            user: None,
            store: None,
            engine: None,
            socket: None,
            session: None,
            connecting: Vec::new(),
            clock: Clock::start(),
            open: HashMap::new(),
            loaded_for_app: HashSet::new(),
            opening: HashMap::new(),
            calls: HashMap::new(),
            history: HashMap::new(),
            failed: None,
        }
    }

    /// Runs until every handle to the domain is gone.
    pub(crate) async fn run(mut self, mut commands: tokio::sync::mpsc::Receiver<Command>) {
        loop {
            let deadline = self.engine.as_ref().and_then(ClientEngine::poll_timeout);
            let wake = deadline.map(|at| self.clock.instant(at));
            tokio::select! {
                // Frames before deadlines: an answer that already arrived is not overdue.
                biased;
                command = commands.recv() => {
                    let Some(mut command) = command else { break };
                    // Edits already queued behind this command too, before draining the
                    // engine, as for frames: their store batches share one commit. Any other
                    // command waits for the drain, so that it sees what came before it stored.
                    for turn in 1..=COMMANDS_PER_TURN {
                        if let Command::Shutdown { reply } = command {
                            self.shutdown().await;
                            let _ = reply.send(());
                            return;
                        }
                        self.command(command).await;
                        if turn == COMMANDS_PER_TURN {
                            break;
                        }
                        match commands.recv().now_or_never() {
                            Some(Some(next)) => {
                                if !matches!(next, Command::Edit { .. }) {
                                    self.pump().await;
                                }
                                command = next;
                            }
                            _ => break,
                        }
                    }
                }
                frame = socket::next(&mut self.socket), if self.socket.is_some() => {
                    let mut carried = edits_in(&frame);
                    self.frame(frame).await;
                    // The frames already here too, before draining the engine: their store
                    // batches share one commit and their answers one send, so that many
                    // models syncing side by side cost one fsync per turn, not one each.
                    for _ in 1..FRAMES_PER_TURN {
                        if carried >= EDITS_PER_TURN {
                            break;
                        }
                        let Some(frame) = socket::next(&mut self.socket).now_or_never() else {
                            break;
                        };
                        carried += edits_in(&frame);
                        self.frame(frame).await;
                        if self.socket.is_none() {
                            break;
                        }
                    }
                }
                () = sleep_until(wake), if wake.is_some() => {
                    let now = self.clock.now();
                    if let Some(engine) = self.engine.as_mut() {
                        engine.handle_timeout(now);
                    }
                }
            }
            self.pump().await;
            if self.failed.is_some() && self.socket.is_some() {
                // A domain whose store failed stops syncing: it says so, not `Connected`.
                self.close_socket().await;
                self.set_state(ConnectionState::Disconnected);
            }
        }
        self.shutdown().await;
    }

    /// Closes the connection, then the store (after what is queued for it is written).
    async fn shutdown(&mut self) {
        self.pump().await;
        if let Some(socket) = self.socket.take() {
            socket.close().await;
        }
        self.engine = None;
        self.store = None;
    }

    fn emit(&self, event: DomainEvent) {
        let _ = self.domain_events.send(event);
    }

    fn model_event(&self, model: &ModelId, event: ModelEvent) {
        if let Some(open) = self.open.get(model) {
            open.events.send(event);
        }
    }

    fn set_state(&self, state: ConnectionState) {
        if *self.state.borrow() != state {
            self.state.send_replace(state.clone());
            self.emit(DomainEvent::State(state));
        }
    }

    async fn command(&mut self, command: Command) {
        if let Some(failed) = &self.failed {
            fail_command(command, failed.clone());
            return;
        }
        match command {
            Command::Connect { auth, reply } => {
                if let (Some(session), Some(_)) = (&self.session, &self.socket) {
                    let _ = reply.send(Ok(session.clone()));
                    return;
                }
                self.connecting.push(reply);
                match self.engine.as_mut() {
                    // The engine asks for the connection (`Action::Connect`).
                    Some(engine) => engine.connect(auth),
                    // No store yet: the handshake names the user whose store it is.
                    None => self.open_connection(auth).await,
                }
            }
            Command::InitializeOffline { user, reply } => {
                let _ = reply.send(self.ensure_store(&user).await);
            }
            Command::Disconnect { reply } => {
                if let Some(engine) = self.engine.as_mut() {
                    engine.disconnect();
                }
                // Closed, and the state says so, before the caller hears back.
                self.pump().await;
                let _ = reply.send(Ok(()));
            }
            Command::Open { model, auto_create, reply } => {
                self.open(model, auto_create, reply).await
            }
            Command::Create { model, collection, data, reply } => {
                let _ = reply.send(self.create(model, collection, data));
            }
            Command::Remove { model, reply } => {
                let result = match self.engine.as_mut() {
                    None => Err(ClientError::NotInitialized),
                    Some(engine) => {
                        // An open model is in the engine, which names its own unconfirmed
                        // creation; for any other, the store's creation record names it.
                        let known = match self.open.remove(&model) {
                            Some(open) => Some((open.collection, None)),
                            None => match &self.store {
                                Some(store) => {
                                    store.load_model_head(&model).await.ok().flatten().map(|s| {
                                        let creation = s.creation.map(|c| c.nonce);
                                        (s.summary.record.collection, creation)
                                    })
                                }
                                None => None,
                            },
                        };
                        match known {
                            // Known here: a tombstone until the server confirms.
                            Some((collection, creation)) => {
                                engine.delete_model(model.clone(), collection, creation);
                                Ok(())
                            }
                            None => Err(ClientError::NotAvailableOffline(model)),
                        }
                    }
                };
                let _ = reply.send(result);
            }
            Command::Subscribe { models, reply } => {
                let result = match (&mut self.engine, &self.store) {
                    (Some(engine), Some(store)) => {
                        let mut known = Vec::new();
                        for model in models {
                            let version = store
                                .load_model_head(&model)
                                .await
                                .ok()
                                .flatten()
                                .and_then(|s| s.summary.confirmed_version);
                            known.push((model, version));
                        }
                        engine.subscribe(known);
                        Ok(())
                    }
                    _ => Err(ClientError::NotInitialized),
                };
                let _ = reply.send(result);
            }
            Command::Unsubscribe { models, reply } => {
                let result = match &mut self.engine {
                    Some(engine) => {
                        engine.unsubscribe(models);
                        Ok(())
                    }
                    None => Err(ClientError::NotInitialized),
                };
                let _ = reply.send(result);
            }
            Command::Subscriptions { reply } => {
                let result = match &self.engine {
                    Some(engine) => Ok(engine.subscriptions().cloned().collect()),
                    None => Err(ClientError::NotInitialized),
                };
                let _ = reply.send(result);
            }
            Command::QueryStore { query, reply } => {
                let _ = reply.send(self.query_store(&query).await);
            }
            Command::StoredModels { reply } => {
                let _ = reply.send(self.stored_models().await);
            }
            Command::CacheIdentities { identities, reply } => {
                let result = match &self.store {
                    None => Err(ClientError::NotInitialized),
                    Some(store) => {
                        let batch = Batch { mutations: vec![Mutation::PutIdentities(identities)] };
                        store.commit(batch).await.map_err(ClientError::from)
                    }
                };
                let _ = reply.send(result);
            }
            Command::CachedIdentities { reply } => {
                let result = match &self.store {
                    None => Err(ClientError::NotInitialized),
                    Some(store) => store
                        .identities()
                        .await
                        .map(|cache| cache.identities.into_values().collect())
                        .map_err(ClientError::from),
                };
                let _ = reply.send(result);
            }
            Command::Presence { op, reply } => {
                let Some(engine) = self.engine.as_mut() else {
                    return drop(reply.send(Err(ClientError::NotInitialized)));
                };
                let call = match op {
                    PresenceOp::Set(state) => Ok(engine.set_presence_state(state)),
                    PresenceOp::Remove(keys) => Ok(engine.remove_presence_state(keys)),
                    PresenceOp::Follow(users) => engine.follow_presence(users).map(Some),
                    PresenceOp::Unfollow(users) => {
                        engine.unfollow_presence(users);
                        Ok(None)
                    }
                };
                match call {
                    Ok(Some(call)) => drop(self.calls.insert(call, reply)),
                    Ok(None) => drop(reply.send(Ok(ServerResponse::Done))),
                    Err(error) => drop(reply.send(Err(error.into()))),
                }
            }
            Command::Activity { op, reply } => {
                let Some(engine) = self.engine.as_mut() else {
                    return drop(reply.send(Err(ClientError::NotInitialized)));
                };
                let call = match op {
                    ActivityOp::Join(activity, state) => {
                        engine.join_activity(activity, state).map(Some)
                    }
                    ActivityOp::Leave(activity) => Ok(engine.leave_activity(activity)),
                    ActivityOp::SetState(activity, state) => {
                        Ok(engine.set_activity_state(activity, state))
                    }
                    ActivityOp::RemoveState(activity, keys) => {
                        Ok(engine.remove_activity_state(activity, keys))
                    }
                    ActivityOp::Remove(activity, session) => engine
                        .call(ClientRequest::Activity(ActivityRequest::Remove {
                            activity,
                            session,
                        }))
                        .map(Some),
                };
                match call {
                    Ok(Some(call)) => drop(self.calls.insert(call, reply)),
                    Ok(None) => drop(reply.send(Ok(ServerResponse::Done))),
                    Err(error) => drop(reply.send(Err(error.into()))),
                }
            }
            Command::Participants { activity, reply } => {
                let result = match self.engine.as_ref() {
                    None => Err(ClientError::NotInitialized),
                    Some(engine) => engine
                        .participants(&activity)
                        .ok_or_else(|| ClientError::NotJoined(activity.clone())),
                };
                let _ = reply.send(result);
            }
            Command::Call { request, reply } => match self.engine.as_mut() {
                None => drop(reply.send(Err(ClientError::Offline))),
                Some(engine) => {
                    match request(engine.replica_id()).and_then(|r| Ok(engine.call(r)?)) {
                        Ok(call) => drop(self.calls.insert(call, reply)),
                        Err(error) => drop(reply.send(Err(error))),
                    }
                }
            },
            Command::Edit { model, build, reply } => {
                let _ = reply.send(self.edit(&model, build));
            }
            Command::History { model, query, reply } => {
                let Some(engine) = self.engine.as_mut() else {
                    return drop(reply.send(Err(ClientError::NotInitialized)));
                };
                match engine.request_history(model, query) {
                    Ok(ticket) => drop(self.history.insert(ticket, reply)),
                    Err(e) => drop(reply.send(Err(e.into()))),
                }
            }
            Command::Read { model, read } => {
                if let Some(replica) = self.engine.as_ref().and_then(|e| e.model(&model)) {
                    read(replica);
                }
                // Otherwise `read` is dropped, and its reply with it: the caller sees why.
            }
            Command::Engine { model, call } => {
                if let Some(engine) = self.engine.as_mut().filter(|e| e.model(&model).is_some()) {
                    call(engine);
                }
            }
            // Handled by the run loop, which stops after it.
            Command::Shutdown { reply } => {
                self.shutdown().await;
                let _ = reply.send(());
            }
            Command::Close { model } => {
                let Some(open) = self.open.get_mut(&model) else { return };
                open.handles = open.handles.saturating_sub(1);
                if open.handles == 0 {
                    self.open.remove(&model);
                    if self.loaded_for_app.remove(&model)
                        && let Some(engine) = self.engine.as_mut()
                    {
                        engine.remove_model(&model);
                    }
                }
            }
        }
    }

    /// Releases a model the application created and never opened, once nothing of it is
    /// unacknowledged. Models loaded for background sync are the engine's to release.
    fn release_if_idle(&mut self, model: &ModelId) {
        if self.open.contains_key(model) || !self.loaded_for_app.contains(model) {
            return;
        }
        let Some(engine) = self.engine.as_mut() else { return };
        let idle = engine.model(model).is_some_and(|m| !m.has_unacknowledged());
        if idle {
            engine.remove_model(model);
            self.loaded_for_app.remove(model);
        }
    }

    /// Opens the store for `user` (once) and starts the engine from it.
    async fn ensure_store(&mut self, user: &str) -> Result<(), ClientError> {
        if let Some(current) = &self.user {
            if current != user {
                return Err(ClientError::OtherUser {
                    current: current.clone(),
                    requested: user.to_owned(),
                });
            }
            return Ok(());
        }
        let key = StoreKey { server: self.urls[0].clone(), user: user.to_owned() };
        let store = self.options.storage.open(&key).await?;
        let replica = match store.replica_id().await? {
            Some(replica) => replica,
            None => {
                let replica = ReplicaId(random_u64());
                let batch = Batch { mutations: vec![Mutation::SetReplicaId(replica)] };
                store.commit(batch).await?;
                replica
            }
        };
        let mut engine = ClientEngine::new(replica, self.options.engine);
        // Ids only, not every model's summary: opening a store with thousands of models
        // changed offline costs what their ids do.
        engine.add_tombstones(store.unsynced().await?.deleted);
        let subscribed = store.subscriptions().await?;
        let summaries = if subscribed.is_empty() { Vec::new() } else { store.models().await? };
        let subscriptions = subscribed
            .into_iter()
            .map(|model| {
                let version = summaries
                    .iter()
                    .find(|s| s.record.id == model)
                    .and_then(|s| s.confirmed_version);
                (model, version)
            })
            .collect();
        engine.add_subscriptions(subscriptions);
        self.user = Some(user.to_owned());
        self.store = Some(store);
        self.engine = Some(engine);
        Ok(())
    }

    /// Carries out the engine's `Action::Connect` (or, before there is a store, the
    /// application's first connect): the WebSocket and the handshake, within the engine's
    /// request timeout. The outcome goes to the engine and to waiting `connect` calls.
    async fn open_connection(&mut self, auth: Auth) {
        let fresh = self.engine.is_none();
        if fresh {
            self.set_state(ConnectionState::Connecting);
        }
        let result = match self.connect_any(auth.clone()).await {
            Ok((socket, session)) => match self.ensure_store(&session.user.id.0).await {
                Ok(()) => Ok((socket, session)),
                Err(e) => {
                    socket.close().await;
                    Err(e)
                }
            },
            Err(e) => Err(e),
        };
        let now = self.clock.now();
        let (socket, session) = match result {
            Ok(connected) => connected,
            Err(error) => {
                tracing::debug!(%error, "connecting failed");
                let rejection = match &error {
                    ClientError::Rejected(rejection) => Some(rejection.clone()),
                    _ => None,
                };
                match self.engine.as_mut() {
                    Some(engine) => engine.handle_connect_failed(now, rejection),
                    None => self.set_state(ConnectionState::Disconnected),
                }
                for reply in self.connecting.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
                return;
            }
        };
        let (Some(engine), Some(store)) = (self.engine.as_mut(), self.store.as_ref()) else {
            return;
        };
        if fresh {
            engine.connect(auth);
        }
        // Ids only: what this costs grows with the models to sync, not with the store.
        let unsynced = match store.unsynced().await {
            Ok(unsynced) => unsynced,
            Err(e) => {
                socket.close().await;
                return self.fail(e.into());
            }
        };
        let mut with_changes = unsynced.changed;
        with_changes.retain(|model| engine.model(model).is_none());
        engine.handle_connected(now, &session, with_changes, unsynced.deleted);
        let state = engine.connection_state();
        self.socket = Some(socket);
        self.session = Some(session.clone());
        // The state says so before the caller hears back.
        self.set_state(state);
        for reply in self.connecting.drain(..) {
            let _ = reply.send(Ok(session.clone()));
        }
    }

    /// Connects to the current server or, when that fails, to the next ones in turn (each
    /// once): the first that accepts. A refused handshake ends the round (another node of
    /// the same cluster would refuse it too).
    async fn connect_any(&mut self, auth: Auth) -> Result<(Socket, Session), ClientError> {
        let timeout = self.options.engine.request_timeout;
        let redirected = std::mem::take(&mut self.redirected);
        let mut error = None;
        for _ in 0..self.urls.len() {
            match socket::connect(&self.urls[self.current], auth.clone(), timeout).await {
                Ok(connected) => {
                    self.suspect[self.current] = false;
                    self.redirected = redirected;
                    return Ok(connected);
                }
                Err(rejected @ ClientError::Rejected(_)) => return Err(rejected),
                Err(failed) => {
                    tracing::debug!(url = %self.urls[self.current], error = %failed, "connecting failed");
                    self.suspect[self.current] = true;
                    self.current = (self.current + 1) % self.urls.len();
                    error = Some(failed);
                }
            }
        }
        Err(error.unwrap_or(ClientError::Timeout))
    }

    /// The server this connection reached named, in an `unavailable` answer, the node
    /// that owns a model (`the model is served by node NAME (URL); connect there`): if that
    /// node is one of the listed servers, not known to be down, and this connection was not
    /// itself reached by a redirect, the client reconnects there.
    fn note_redirect(&mut self, message: &ServerMessage) {
        let error = match message {
            ServerMessage::Error { error, .. } => error,
            ServerMessage::Push(ServerPush::SubmitRejected { error, .. }) => error,
            _ => return,
        };
        if error.code != ErrorCode::UNAVAILABLE || self.redirected || self.urls.len() < 2 {
            return;
        }
        let Some(owner) = owner_url(&error.message) else { return };
        let listed = self.urls.iter().position(|url| {
            url.strip_prefix(owner).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        });
        if let Some(index) = listed
            && index != self.current
            && !self.suspect[index]
        {
            self.redirect = Some(index);
        }
    }

    /// The connection broke: the engine hears of it and decides when to try again — at the
    /// next listed server.
    async fn connection_lost(&mut self) {
        self.leave_current();
        self.close_socket().await;
        if let Some(engine) = self.engine.as_mut() {
            engine.handle_disconnected(self.clock.now());
        }
    }

    /// The connected server failed: the next attempt starts at the next listed one.
    fn leave_current(&mut self) {
        if self.socket.is_some() {
            self.suspect[self.current] = true;
            self.current = (self.current + 1) % self.urls.len();
        }
        self.redirected = false;
    }

    async fn close_socket(&mut self) {
        self.session = None;
        if let Some(socket) = self.socket.take() {
            socket.close().await;
        }
    }

    async fn frame(&mut self, frame: Option<Result<ServerMessage, ClientError>>) {
        let message = match frame {
            Some(Ok(message)) => message,
            Some(Err(error)) => {
                tracing::info!(%error, "the connection failed");
                return self.connection_lost().await;
            }
            None => return self.connection_lost().await,
        };
        self.note_redirect(&message);
        let now = self.clock.now();
        if let Some(engine) = self.engine.as_mut() {
            engine.handle_message(now, message);
        }
        if let Some(owner) = self.redirect.take() {
            tracing::info!(url = %self.urls[owner], "reconnecting to the node that owns a model");
            // As a lost connection: the engine resyncs every model on the next one.
            self.close_socket().await;
            self.current = owner;
            self.redirected = true;
            if let Some(engine) = self.engine.as_mut() {
                engine.handle_disconnected(self.clock.now());
            }
        }
    }

    /// Creates the application's handle state for an open model.
    fn register(&mut self, model: &ModelId, collection: CollectionId) {
        self.loaded_for_app.insert(model.clone());
        let entry = self.open.entry(model.clone()).or_insert_with(|| OpenModel {
            events: ModelChannel::default(),
            watermarks: watch::channel(Watermarks::default()).0,
            handles: 0,
            collection,
        });
        entry.handles += 1;
        if let Some(replica) = self.engine.as_ref().and_then(|e| e.model(model)) {
            let (last, stored) = (replica.last_seq(), replica.durable_seq());
            let settled = !replica.has_unacknowledged();
            entry.watermarks.send_modify(|w| {
                w.last = w.last.max(last);
                w.stored = w.stored.max(stored);
                if settled {
                    w.acknowledged = w.acknowledged.max(last);
                }
            });
        }
    }

    fn handle(&self, model: &ModelId) -> Opened {
        let open = &self.open[model];
        let root = self.engine.as_ref().and_then(|e| e.model(model)).map(|m| m.local().root_id());
        Opened {
            collection: open.collection.clone(),
            root: root.unwrap_or(ElementId { replica: ReplicaId(0), counter: 0 }),
            events: open.events.clone(),
            watermarks: open.watermarks.subscribe(),
        }
    }

    async fn open(
        &mut self,
        model: ModelId,
        auto_create: Option<AutoCreate>,
        reply: Reply<Opened>,
    ) {
        let (Some(engine), Some(store)) = (self.engine.as_mut(), self.store.as_ref()) else {
            let _ = reply.send(Err(ClientError::NotInitialized));
            return;
        };
        // In memory already (open, or syncing in the background).
        if let Some(replica) = engine.model(&model) {
            let collection = replica.confirmed().collection.clone();
            engine.keep_loaded(&model);
            self.register(&model, collection);
            let _ = reply.send(Ok(self.handle(&model)));
            return;
        }
        // In the store.
        match load_restored(&**store, &model).await {
            Ok(Some((summary, restored))) if !summary.record.deleted_locally => {
                let collection = summary.record.collection.clone();
                let restored = restored.map_err(|e| ClientError::Storage(e.to_string()));
                let result =
                    restored.and_then(|restored| Ok(engine.add_model(model.clone(), restored)?));
                let result = result.map(|()| {
                    self.register(&model, collection);
                    self.handle(&model)
                });
                let _ = reply.send(result);
                return;
            }
            Ok(Some(_)) => {
                let _ = reply.send(Err(ClientError::Engine(
                    concord_sync::EngineError::DeletionPending(model),
                )));
                return;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = reply.send(Err(e.into()));
                return;
            }
        }
        // Only the server has it: the engine asks, and answers with an event.
        let auto_create = match auto_create {
            Some(AutoCreate { collection, data }) => match document(&data, engine.replica_id()) {
                Ok(document) => Some((collection, document)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            },
            None => None,
        };
        match engine.open_at_server(model.clone(), auto_create) {
            Ok(()) => self.opening.entry(model).or_default().push(reply),
            Err(EngineError::Offline(model)) => {
                let _ = reply.send(Err(ClientError::NotAvailableOffline(model)));
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    /// The engine's answer to opens at the server.
    fn opened(&mut self, model: &ModelId, failure: Option<OpenFailure>) {
        let replies = self.opening.remove(model).unwrap_or_default();
        let loaded = self
            .engine
            .as_ref()
            .and_then(|e| e.model(model))
            .map(|m| m.confirmed().collection.clone());
        for reply in replies {
            let result = match (&failure, &loaded) {
                (None, Some(collection)) => {
                    self.register(model, collection.clone());
                    Ok(self.handle(model))
                }
                (None, None) => Err(ClientError::NotOpen(model.clone())),
                (Some(OpenFailure::Refused(error)), _) => Err(ClientError::Server(error.clone())),
                (Some(OpenFailure::TimedOut), _) => Err(ClientError::Timeout),
                (Some(OpenFailure::ConnectionLost), _) => Err(ClientError::Connect {
                    url: self.urls[self.current].clone(),
                    reason: "the connection closed".into(),
                }),
            };
            let _ = reply.send(result);
        }
    }

    fn create(
        &mut self,
        model: ModelId,
        collection: CollectionId,
        data: serde_json::Value,
    ) -> Result<(), ClientError> {
        let engine = self.engine.as_mut().ok_or(ClientError::NotInitialized)?;
        let document = document(&data, engine.replica_id())?;
        let nonce =
            CreationNonce(random_u64().to_le_bytes().repeat(2).try_into().unwrap_or([0; 16]));
        engine.create_model(model.clone(), collection, document, nonce, now())?;
        // It stays in memory until the server has it, then leaves unless opened.
        self.loaded_for_app.insert(model);
        Ok(())
    }

    fn edit(&mut self, model: &ModelId, build: Build) -> Result<u64, ClientError> {
        let engine = self.engine.as_mut().ok_or(ClientError::NotInitialized)?;
        if engine.model(model).is_none() {
            return Err(ClientError::NotOpen(model.clone()));
        }
        let seq = engine.local_edit(model, build)?;
        self.watermark(model, |w| w.last = seq);
        Ok(seq)
    }

    /// `query` over the offline store's models of its collection, each as the local view
    /// shows it (pending changes applied): from memory when loaded, else restored from the
    /// store.
    async fn query_store(&self, query: &concord_query::Query) -> Result<QueryResult, ClientError> {
        let (Some(store), Some(engine)) = (&self.store, &self.engine) else {
            return Err(ClientError::NotInitialized);
        };
        let local = |id: ModelId, replica: &concord_sync::ModelReplica| LocalModel {
            id,
            version: replica.confirmed_version(),
            created: replica.confirmed().created_at.0,
            modified: replica.confirmed().modified_at.0,
            data: replica.local().to_value(),
        };
        let mut models = Vec::new();
        for summary in store.models().await? {
            let record = summary.record;
            let available = summary.snapshot_version.is_some() || record.created_locally;
            if record.collection.as_str() != query.collection
                || record.deleted_locally
                || !available
            {
                continue;
            }
            if let Some(replica) = engine.model(&record.id) {
                models.push(local(record.id, replica));
                continue;
            }
            if let Some((_, restored)) = load_restored(&**store, &record.id).await? {
                let restored = restored.map_err(|e| ClientError::Storage(e.to_string()))?;
                models.push(local(record.id, &restored.replica));
            }
        }
        Ok(evaluate_local(query, &models))
    }

    async fn stored_models(&self) -> Result<Vec<StoredModel>, ClientError> {
        let (Some(store), Some(engine)) = (&self.store, &self.engine) else {
            return Err(ClientError::NotInitialized);
        };
        let subscribed: Vec<&ModelId> = engine.subscriptions().collect();
        let summaries = store.models().await?;
        Ok(summaries
            .into_iter()
            .map(|s| StoredModel {
                subscribed: subscribed.contains(&&s.record.id),
                available: s.snapshot_version.is_some() || s.record.created_locally,
                has_pending_changes: s.pending_count > 0,
                created_locally: s.record.created_locally,
                deleted_locally: s.record.deleted_locally,
                version: s.confirmed_version,
                collection: s.record.collection,
                id: s.record.id,
            })
            .collect())
    }

    fn fail(&mut self, error: ClientError) {
        tracing::error!(%error, "the offline store failed; the domain stops");
        self.emit(DomainEvent::StorageFailed(error.to_string()));
        for reply in self.connecting.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        for reply in self.opening.drain().flat_map(|(_, replies)| replies) {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, reply) in self.calls.drain() {
            let _ = reply.send(Err(error.clone()));
        }
        self.failed = Some(error);
        // The engine stops reconnecting; the run loop drops the socket.
        if let Some(engine) = self.engine.as_mut() {
            engine.disconnect();
        }
        // Dropping the models' watermark senders ends every `stored()` and `acknowledged()`
        // still waiting, with an error: what they wait for can no longer happen.
        self.open.clear();
    }

    /// Drains the engine: storage first (one group commit), then transmit, events,
    /// connection actions, loads.
    async fn pump(&mut self) {
        while self.failed.is_none() {
            let Some(engine) = self.engine.as_mut() else { return };
            let mut batches = Vec::new();
            let mut last = None;
            while let Some(batch) = engine.poll_storage() {
                last = Some(batch.id);
                batches.push(Batch { mutations: store::batch_mutations(batch) });
            }
            if let Some(last) = last {
                let Some(store) = self.store.as_ref() else { return };
                if let Err(e) = store.commit_group(batches).await {
                    return self.fail(e.into());
                }
                engine.handle_durable(last);
                continue;
            }
            let now = self.clock.now();
            let mut outgoing = Vec::new();
            while let Some(message) = engine.poll_transmit(now) {
                outgoing.push(message);
            }
            let mut events = Vec::new();
            while let Some(event) = engine.poll_event() {
                events.push(event);
            }
            while let Some((call, answer)) = engine.poll_answer() {
                if let Some(reply) = self.calls.remove(&call) {
                    let _ = reply.send(answer.map_err(ClientError::from));
                }
            }
            while let Some((ticket, answer)) = engine.poll_history() {
                if let Some(reply) = self.history.remove(&ticket) {
                    let _ = reply.send(answer.map_err(|error| match error.code {
                        ErrorCode::TIMEOUT => ClientError::Timeout,
                        _ => ClientError::Server(error),
                    }));
                }
            }
            let mut actions = Vec::new();
            while let Some(action) = engine.poll_action() {
                actions.push(action);
            }
            // Every load asked for, before the next commit: the models background sync
            // loads side by side then make their submissions durable in one commit, not one
            // fsync after another.
            let loads: Vec<ModelId> = std::iter::from_fn(|| engine.poll_load()).collect();
            let idle = outgoing.is_empty() && actions.is_empty() && loads.is_empty();
            if !outgoing.is_empty()
                && let Some(socket) = self.socket.as_mut()
                && let Err(error) = socket.send_all(&outgoing).await
            {
                tracing::debug!(%error, "sending failed");
                self.connection_lost().await;
            }
            for event in events {
                self.event(event);
            }
            for action in actions {
                match action {
                    Action::Connect { auth } => self.open_connection(auth).await,
                    Action::Disconnect { reason } => {
                        tracing::info!(?reason, "closing the connection");
                        if reason != DisconnectReason::Requested {
                            // A silent server: the next attempt goes to the next one.
                            self.leave_current();
                        }
                        self.close_socket().await;
                    }
                }
            }
            for model in loads {
                if self.failed.is_some() {
                    break;
                }
                self.load(model).await;
            }
            if idle {
                return;
            }
        }
    }

    async fn load(&mut self, model: ModelId) {
        let (Some(engine), Some(store)) = (self.engine.as_mut(), self.store.as_ref()) else {
            return;
        };
        let loaded = match load_restored(&**store, &model).await {
            Ok(Some((_, restored))) => match restored {
                Ok(restored) => Some(restored),
                Err(error) => {
                    tracing::warn!(%model, %error, "a stored model cannot be restored");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => return self.fail(e.into()),
        };
        engine.handle_loaded(model, loaded);
    }

    /// Passes the engine's events on — model events to the model's handles, domain events
    /// to the domain's — after what the client itself does on them: watermarks, releasing
    /// idle models, answering opens.
    fn event(&mut self, event: Event) {
        match event {
            Event::Model { model, event } => {
                match &event {
                    ModelEvent::Stored { seq } => {
                        self.watermark(&model, |w| w.stored = w.stored.max(*seq));
                    }
                    ModelEvent::Acknowledged { seq, .. } => {
                        self.watermark(&model, |w| w.acknowledged = w.acknowledged.max(*seq));
                    }
                    ModelEvent::Committed => self.watermark(&model, |w| w.acknowledged = w.last),
                    _ => {}
                }
                let committed = event == ModelEvent::Committed;
                self.model_event(&model, event);
                if committed {
                    self.release_if_idle(&model);
                }
            }
            Event::Presence(presence) => {
                let _ = self.presence_events.send(presence);
            }
            Event::Activity { activity, change } => {
                let _ = self.activity_events.send((activity, change));
            }
            // Emitted by `set_state`, once the state watch says so.
            Event::Domain(DomainEvent::State(state)) => self.set_state(state),
            Event::Domain(event) => {
                match &event {
                    DomainEvent::Created { model } => self.release_if_idle(model),
                    DomainEvent::Opened { model } => self.opened(model, None),
                    DomainEvent::OpenFailed { model, failure } => {
                        self.opened(model, Some(failure.clone()));
                    }
                    DomainEvent::ServerFault { model, error } => {
                        tracing::warn!(%model, %error, "the server failed serving a model");
                    }
                    DomainEvent::ProtocolViolation { model, error } => {
                        tracing::warn!(%model, %error, "the server broke the protocol for a model");
                    }
                    DomainEvent::ConnectionRefused(rejection) => {
                        tracing::warn!(?rejection, "the server refused the credentials for good");
                    }
                    _ => {}
                }
                self.emit(event);
            }
        }
    }

    fn watermark(&self, model: &ModelId, change: impl FnOnce(&mut Watermarks)) {
        if let Some(open) = self.open.get(model) {
            open.watermarks.send_modify(change);
        }
    }
}

/// How many edits (discrete operations) a received frame carries; at least one, for any
/// frame.
fn edits_in(frame: &Option<Result<ServerMessage, ClientError>>) -> usize {
    let operations = match frame {
        Some(Ok(ServerMessage::Push(ServerPush::ResyncPage { operations, .. })))
        | Some(Ok(ServerMessage::Push(ServerPush::OfflineUpdate {
            update: OfflineUpdate::Operations { operations, .. },
            ..
        }))) => operations.as_slice(),
        _ => &[],
    };
    operations.iter().map(|op| op.operation.discrete().len()).sum::<usize>().max(1)
}

/// The owner's URL in a node's `unavailable` answer: `… served by node NAME (URL); …`.
fn owner_url(message: &str) -> Option<&str> {
    let named = &message[message.find("served by node ")?..];
    let start = named.rfind("(ws://").max(named.rfind("(wss://"))? + 1;
    let end = start + named[start..].find(')')?;
    Some(&named[start..end])
}

/// A model's initial data as a document, its ids minted by this replica from 0 (ids are
/// unique per model; local changes continue past them).
pub(crate) fn document(
    data: &serde_json::Value,
    replica: ReplicaId,
) -> Result<Document, ClientError> {
    let mut ids = IdGenerator::new(replica, 0);
    let value = concord_ot::Value::from_json(data, &mut ids)
        .map_err(|e| ClientError::InvalidValue(e.to_string()))?;
    Document::new(value).map_err(|e| ClientError::InvalidValue(e.to_string()))
}

fn fail_command(command: Command, error: ClientError) {
    match command {
        Command::Connect { reply, .. } => drop(reply.send(Err(error))),
        Command::InitializeOffline { reply, .. }
        | Command::Disconnect { reply }
        | Command::Create { reply, .. }
        | Command::Remove { reply, .. }
        | Command::Subscribe { reply, .. }
        | Command::Unsubscribe { reply, .. } => drop(reply.send(Err(error))),
        Command::Open { reply, .. } => drop(reply.send(Err(error))),
        Command::Subscriptions { reply } => drop(reply.send(Err(error))),
        Command::StoredModels { reply } => drop(reply.send(Err(error))),
        Command::CacheIdentities { reply, .. } => drop(reply.send(Err(error))),
        Command::CachedIdentities { reply } => drop(reply.send(Err(error))),
        Command::QueryStore { reply, .. } => drop(reply.send(Err(error))),
        Command::Edit { reply, .. } => drop(reply.send(Err(error))),
        Command::Call { reply, .. }
        | Command::Presence { reply, .. }
        | Command::Activity { reply, .. }
        | Command::History { reply, .. } => drop(reply.send(Err(error))),
        Command::Participants { reply, .. } => drop(reply.send(Err(error))),
        Command::Read { .. } | Command::Engine { .. } | Command::Close { .. } => {}
        Command::Shutdown { reply } => drop(reply.send(())),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => rt::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0; 8];
    // Without OS randomness the time still separates replicas in practice.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos =
            rt::SystemTime::now().duration_since(rt::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        bytes = (nanos as u64).to_le_bytes();
    }
    u64::from_le_bytes(bytes)
}

pub(crate) fn now() -> Timestamp {
    let millis = rt::SystemTime::now().duration_since(rt::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    Timestamp(i64::try_from(millis).unwrap_or(i64::MAX))
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Connect { .. } => "Connect",
            Command::InitializeOffline { .. } => "InitializeOffline",
            Command::Disconnect { .. } => "Disconnect",
            Command::Open { .. } => "Open",
            Command::Create { .. } => "Create",
            Command::Remove { .. } => "Remove",
            Command::Subscribe { .. } => "Subscribe",
            Command::Unsubscribe { .. } => "Unsubscribe",
            Command::Subscriptions { .. } => "Subscriptions",
            Command::StoredModels { .. } => "StoredModels",
            Command::CacheIdentities { .. } => "CacheIdentities",
            Command::CachedIdentities { .. } => "CachedIdentities",
            Command::QueryStore { .. } => "QueryStore",
            Command::Edit { .. } => "Edit",
            Command::Read { .. } => "Read",
            Command::Engine { .. } => "Engine",
            Command::History { .. } => "History",
            Command::Close { .. } => "Close",
            Command::Call { .. } => "Call",
            Command::Presence { .. } => "Presence",
            Command::Activity { .. } => "Activity",
            Command::Participants { .. } => "Participants",
            Command::Shutdown { .. } => "Shutdown",
        })
    }
}

/// Reads a stored model and rebuilds it, its pending operations a page at a time
/// ([`store::RestoringModel`]): a model with many offline changes is never read or held as
/// one record per change. `None` if the store has no record of it; the summary, with the
/// restored model or why it cannot be restored. Read again if the store changed between
/// the pages (a commit of this client's that was still in flight).
async fn load_restored(
    store: &dyn OfflineStore,
    model: &ModelId,
) -> Result<Option<(ModelSummary, Result<Restored, store::RestoreError>)>, StorageError> {
    const ATTEMPTS: usize = 3;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(head) = store.load_model_head(model).await? else {
            return Ok(None);
        };
        let summary = head.summary.clone();
        let mut restoring = match store::RestoringModel::new(head) {
            Ok(restoring) => restoring,
            Err(error) => return Ok(Some((summary, Err(error)))),
        };
        let mut failed = None;
        while let Some(after) = restoring.next_after() {
            let page = store.pending_page(model, after, store::RESTORE_PAGE).await?;
            if let Err(error) = restoring.push(page) {
                failed = Some(error);
                break;
            }
        }
        let restored = match failed {
            Some(error) => Err(error),
            None => restoring.finish(),
        };
        match restored {
            Err(store::RestoreError::Changed(_)) if attempt < ATTEMPTS => continue,
            restored => return Ok(Some((summary, restored))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner_url;

    #[test]
    fn the_owner_url_is_read_from_a_nodes_refusal() {
        let refusal = "the model is served by node node1 (ws://127.0.0.1:7701); connect there";
        assert_eq!(owner_url(refusal), Some("ws://127.0.0.1:7701"));
        let named = "the model is served by node a (b) (wss://n.example:443); connect there";
        assert_eq!(owner_url(named), Some("wss://n.example:443"));
        assert_eq!(owner_url("the model could not be leased: timeout (5 s)"), None);
        assert_eq!(owner_url("the model is served by node x (file:///etc); connect"), None);
    }
}
