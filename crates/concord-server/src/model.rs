//! One task per active model: it owns the model's [`Sequencer`], the sessions that have it
//! open or subscribed, and its permissions, and it handles that model's commands one at a
//! time — so models never wait on each other and no lock is held around OT.
//!
//! Everything a command produces — store writes and the messages that follow from them — is
//! queued as one job on the store writer, which delivers the messages only once the writes
//! are durable. A task unloads itself when nobody has used the model for a while.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use concord_ot::{Document, Operation, ReferenceValue, ReplicaId};
use concord_protocol::{
    Collaborator, CollectionId, CommittedOperation, CreationNonce, ErrorCode, ErrorReply, InFlight,
    ModelSnapshot, OfflineUpdate, OpenedModel, PermissionGrants, Permissions, ReferenceChange,
    ReferenceKey, RequestId, ServerMessage, ServerPush, ServerRequest, ServerResponse, SessionId,
    SharedReference, Timestamp, User,
};
use concord_sync::{CatchUp, Sequencer, SequencerError, Submission, SubmitOutcome};
use tokio::sync::{mpsc, oneshot};

use crate::config::CollectionConfig;
use crate::hub::Hub;
use crate::outbox::{ConnId, Delivery, Outbound, Outbox, frame};
use crate::permissions::{effective, may_create};
use crate::store::{Job, Loaded, ModelKey, ModelRecord, StoreError, Write};

/// Operations per `ResyncPage` (and per catch-up page).
pub(crate) const PAGE: usize = 256;

/// A session as the model task sees it.
#[derive(Debug, Clone)]
pub(crate) struct SessionRef {
    pub(crate) session: SessionId,
    pub(crate) user: User,
    pub(crate) outbox: Outbox,
}

impl SessionRef {
    fn conn(&self) -> ConnId {
        self.outbox.conn
    }
}

/// Told when the model is open on the connection; dropped unsent when the open failed, so
/// the connection can forget it.
pub(crate) type Opened = Option<oneshot::Sender<()>>;

/// What a connection asks of a model.
#[derive(Debug)]
pub(crate) enum ModelCommand {
    /// `auto_create` is the id of the `AutoCreate` request to send if the model is missing.
    Open {
        from: SessionRef,
        request: RequestId,
        auto_create: Option<RequestId>,
        opened: Opened,
    },
    Create {
        from: SessionRef,
        request: RequestId,
        collection: CollectionId,
        data: Document,
        nonce: Option<CreationNonce>,
        permissions: Option<PermissionGrants>,
        /// Answer with `ModelOpened` (the end of an auto-create open) instead of `ModelCreated`.
        open: bool,
        opened: Opened,
    },
    Resync {
        from: SessionRef,
        request: RequestId,
        known_version: u64,
        in_flight: Option<InFlight>,
        opened: Opened,
    },
    ResyncComplete {
        from: SessionRef,
        request: RequestId,
    },
    Close {
        from: SessionRef,
        request: RequestId,
    },
    Submit {
        from: SessionRef,
        replica: ReplicaId,
        seq: u64,
        base_version: u64,
        operation: Operation,
    },
    Subscribe {
        from: SessionRef,
        known: Option<u64>,
    },
    Unsubscribe {
        conn: ConnId,
    },
    Delete {
        from: SessionRef,
        request: RequestId,
    },
    GetPermissions {
        from: SessionRef,
        request: RequestId,
    },
    SetPermissions {
        from: SessionRef,
        request: RequestId,
        grants: PermissionGrants,
    },
    Reference {
        from: SessionRef,
        change: ReferenceChange,
    },
    Disconnected {
        conn: ConnId,
    },
}

/// What a `CreateModel` (or an auto-create answer) brings.
struct Creation {
    collection: CollectionId,
    data: Document,
    nonce: Option<CreationNonce>,
    permissions: Option<PermissionGrants>,
}

struct Live {
    sequencer: Sequencer,
    record: ModelRecord,
    collection: CollectionConfig,
    /// Operations committed since the last stored snapshot.
    since_snapshot: u64,
}

enum State {
    Live(Box<Live>),
    Absent { deleted: bool },
}

struct Member {
    session: SessionRef,
    permissions: Permissions,
}

pub(crate) struct ModelTask {
    key: ModelKey,
    hub: Arc<Hub>,
    state: State,
    open: HashMap<ConnId, Member>,
    subscribers: HashMap<ConnId, Member>,
    /// The connection each replica last submitted or resynced on: where its acks go.
    replicas: HashMap<ReplicaId, ConnId>,
    references: BTreeMap<(SessionId, ReferenceKey), Option<ReferenceValue>>,
    /// What the commands handled so far produced, queued on the writer as one job.
    job: Job,
}

fn now() -> Timestamp {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    Timestamp(i64::try_from(millis).unwrap_or(i64::MAX))
}

fn error(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, message)
}

impl ModelTask {
    /// Runs the task for `key` until it unloads.
    pub(crate) async fn run(
        key: ModelKey,
        hub: Arc<Hub>,
        mut commands: mpsc::Receiver<ModelCommand>,
    ) {
        let state = match hub.load(&key).await {
            Ok(state) => state,
            Err(e) => {
                tracing::error!(model = %key.model, error = %e, "loading a model failed");
                // Answer what is queued, then leave; the next command loads again.
                fail_all(&key, &hub, &mut commands, &e).await;
                return;
            }
        };
        let mut task = ModelTask {
            state: match state {
                Loaded::Model(stored) => match Live::restore(&key, *stored, &hub) {
                    Ok(live) => State::Live(Box::new(live)),
                    Err(e) => {
                        tracing::error!(model = %key.model, error = %e, "a stored model does not load");
                        fail_all(&key, &hub, &mut commands, &e).await;
                        return;
                    }
                },
                Loaded::Absent { deleted } => State::Absent { deleted },
            },
            key,
            hub,
            open: HashMap::new(),
            subscribers: HashMap::new(),
            replicas: HashMap::new(),
            references: BTreeMap::new(),
            job: Job::default(),
        };
        task.serve(commands).await;
    }

    async fn serve(&mut self, mut commands: mpsc::Receiver<ModelCommand>) {
        let stop = self.hub.stop_models.clone();
        loop {
            let idle = self.open.is_empty() && self.subscribers.is_empty();
            // A missing model has nothing to keep: it goes as soon as nobody asks for it.
            let linger = match self.state {
                State::Absent { .. } => std::time::Duration::ZERO,
                State::Live(_) => self.hub.config.idle_unload,
            };
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    self.handle(command).await;
                    // Take whatever else is waiting into the same job, then queue it.
                    while self.job.deliveries.len() < 4 * PAGE {
                        match commands.try_recv() {
                            Ok(command) => self.handle(command).await,
                            Err(_) => break,
                        }
                    }
                    self.queue_job().await;
                }
                () = tokio::time::sleep(linger), if idle => {
                    if self.unload(&mut commands).await {
                        return;
                    }
                }
                // Only once every connection is gone, so no command can follow.
                () = stop.cancelled() => {
                    while let Ok(command) = commands.try_recv() {
                        self.handle(command).await;
                    }
                    self.store_snapshot();
                    self.queue_job().await;
                    return;
                }
            }
        }
    }

    /// Queues a snapshot if operations were committed since the last one.
    fn store_snapshot(&mut self) {
        if let State::Live(live) = &mut self.state
            && live.since_snapshot > 0
        {
            live.since_snapshot = 0;
            let snapshot = live.sequencer.snapshot();
            self.job.writes.push(Write::Snapshot { key: self.key.clone(), snapshot });
        }
    }

    async fn queue_job(&mut self) {
        let job = std::mem::take(&mut self.job);
        if job.writes.is_empty() && job.deliveries.is_empty() {
            return;
        }
        if self.hub.writer.submit(job).await.is_err() {
            // The store stopped taking writes: the server is shutting down (fail-stop).
            for member in self.open.values() {
                member.session.outbox.close();
            }
        }
    }

    /// Leaves if still idle once everything written is durable; `false` if a command came.
    async fn unload(&mut self, commands: &mut mpsc::Receiver<ModelCommand>) -> bool {
        self.store_snapshot();
        self.queue_job().await;
        if self.hub.writer.flush().await.is_err() {
            return true;
        }
        match self.hub.unload(&self.key, commands) {
            Ok(()) => true,
            Err(stragglers) => {
                for command in stragglers {
                    self.handle(command).await;
                }
                self.queue_job().await;
                false
            }
        }
    }

    fn say(&mut self, to: &Outbox, message: &ServerMessage) {
        if let Some(frame) = frame(message) {
            self.job
                .deliveries
                .push(Delivery { outbox: to.clone(), outbound: Outbound::Frame(frame) });
        }
    }

    fn say_frame(&mut self, to: &Outbox, frame: Bytes) {
        self.job.deliveries.push(Delivery { outbox: to.clone(), outbound: Outbound::Frame(frame) });
    }

    fn respond(&mut self, to: &SessionRef, request: RequestId, response: ServerResponse) {
        self.say(&to.outbox, &ServerMessage::Response { to: request, response });
    }

    fn fail(&mut self, to: &SessionRef, request: RequestId, error: ErrorReply) {
        self.say(&to.outbox, &ServerMessage::Error { to: Some(request), error });
    }

    fn push(&mut self, to: &Outbox, push: ServerPush) {
        self.say(to, &ServerMessage::Push(push));
    }

    fn missing(&self) -> ErrorReply {
        match self.state {
            State::Absent { deleted: true } => {
                error(ErrorCode::MODEL_DELETED, "the model was deleted")
            }
            _ => error(ErrorCode::MODEL_NOT_FOUND, format!("no model {}", self.key.model)),
        }
    }

    async fn handle(&mut self, command: ModelCommand) {
        match command {
            ModelCommand::Open { from, request, auto_create, opened } => {
                self.open(from, request, auto_create, opened)
            }
            ModelCommand::Create {
                from,
                request,
                collection,
                data,
                nonce,
                permissions,
                open,
                opened,
            } => {
                let creation = Creation { collection, data, nonce, permissions };
                self.create(from, request, creation, open.then_some(opened)).await
            }
            ModelCommand::Resync { from, request, known_version, in_flight, opened } => {
                self.resync(from, request, known_version, in_flight, opened)
            }
            // `open: false` (a model only being synced) still takes submissions: the client
            // closes it once they are acknowledged.
            ModelCommand::ResyncComplete { from, request, .. } => {
                let (collaborators, references) = self.presence(from.conn());
                let model = self.key.model.clone();
                self.respond(
                    &from,
                    request,
                    ServerResponse::ResyncCompleted { model, collaborators, references },
                );
            }
            ModelCommand::Close { from, request } => {
                self.leave(from.conn());
                self.respond(&from, request, ServerResponse::Done);
            }
            ModelCommand::Submit { from, replica, seq, base_version, operation } => {
                self.submit(from, replica, seq, base_version, operation).await
            }
            ModelCommand::Subscribe { from, known } => self.subscribe(from, known),
            ModelCommand::Unsubscribe { conn } => {
                self.subscribers.remove(&conn);
            }
            ModelCommand::Delete { from, request } => self.delete(from, request),
            ModelCommand::GetPermissions { from, request } => match self.managed(&from) {
                Ok(live) => {
                    let grants = live.record.grants.clone();
                    let model = self.key.model.clone();
                    self.respond(&from, request, ServerResponse::Permissions { model, grants });
                }
                Err(e) => self.fail(&from, request, e),
            },
            ModelCommand::SetPermissions { from, request, grants } => {
                self.set_permissions(from, request, grants)
            }
            ModelCommand::Reference { from, change } => self.reference(from, change),
            ModelCommand::Disconnected { conn } => {
                self.leave(conn);
                self.subscribers.remove(&conn);
            }
        }
    }

    fn permissions_of(&self, user: &User) -> Permissions {
        match &self.state {
            State::Live(live) => effective(user, &live.record.grants, &live.collection),
            State::Absent { .. } => Permissions::NONE,
        }
    }

    fn managed(&self, from: &SessionRef) -> Result<&Live, ErrorReply> {
        let State::Live(live) = &self.state else { return Err(self.missing()) };
        if !effective(&from.user, &live.record.grants, &live.collection).manage {
            return Err(error(ErrorCode::PERMISSION_DENIED, "managing permissions needs `manage`"));
        }
        Ok(live)
    }

    /// The other sessions with the model open, and the references they share.
    fn presence(&self, conn: ConnId) -> (Vec<Collaborator>, Vec<SharedReference>) {
        let collaborators = self
            .open
            .iter()
            .filter(|(c, _)| **c != conn)
            .map(|(_, m)| Collaborator {
                session: m.session.session.clone(),
                user: m.session.user.id.clone(),
            })
            .collect();
        let own = self.open.get(&conn).map(|m| m.session.session.clone());
        let references = self
            .references
            .iter()
            .filter(|((session, _), _)| Some(session) != own.as_ref())
            .map(|((session, reference), value)| SharedReference {
                session: session.clone(),
                reference: reference.clone(),
                value: value.clone(),
            })
            .collect();
        (collaborators, references)
    }

    /// Adds a session to the open set (telling the others), with its permissions.
    fn join(&mut self, from: &SessionRef, permissions: Permissions, opened: Opened) {
        if let Some(opened) = opened {
            let _ = opened.send(());
        }
        let member = Member { session: from.clone(), permissions };
        if self.open.insert(from.conn(), member).is_none() {
            let collaborator =
                Collaborator { session: from.session.clone(), user: from.user.id.clone() };
            let push =
                ServerPush::CollaboratorOpened { model: self.key.model.clone(), collaborator };
            self.broadcast_except(from.conn(), &ServerMessage::Push(push));
        }
    }

    fn leave(&mut self, conn: ConnId) {
        let Some(member) = self.open.remove(&conn) else { return };
        self.replicas.retain(|_, c| *c != conn);
        let session = member.session.session;
        self.references.retain(|(s, _), _| *s != session);
        let push = ServerPush::CollaboratorClosed { model: self.key.model.clone(), session };
        self.broadcast_except(conn, &ServerMessage::Push(push));
    }

    fn broadcast_except(&mut self, conn: ConnId, message: &ServerMessage) {
        if self.open.len() <= 1 && self.open.contains_key(&conn) {
            return;
        }
        let Some(frame) = frame(message) else { return };
        let targets: Vec<Outbox> = self
            .open
            .iter()
            .filter(|(c, _)| **c != conn)
            .map(|(_, m)| m.session.outbox.clone())
            .collect();
        for outbox in targets {
            self.say_frame(&outbox, frame.clone());
        }
    }

    fn open(
        &mut self,
        from: SessionRef,
        request: RequestId,
        auto_create: Option<RequestId>,
        opened: Opened,
    ) {
        let live = match &self.state {
            State::Live(live) => live,
            State::Absent { deleted: false } if auto_create.is_some() => {
                let id = auto_create.unwrap_or(RequestId(0));
                let model = self.key.model.clone();
                let message =
                    ServerMessage::Request { id, request: ServerRequest::AutoCreate { model } };
                return self.say(&from.outbox, &message);
            }
            State::Absent { .. } => {
                let e = self.missing();
                return self.fail(&from, request, e);
            }
        };
        let permissions = effective(&from.user, &live.record.grants, &live.collection);
        if !permissions.read {
            let e = error(ErrorCode::PERMISSION_DENIED, "opening the model needs `read`");
            return self.fail(&from, request, e);
        }
        let snapshot = live.sequencer.snapshot();
        let (collaborators, references) = self.presence(from.conn());
        self.join(&from, permissions, opened);
        let opened = OpenedModel {
            model: self.key.model.clone(),
            snapshot,
            permissions,
            collaborators,
            references,
        };
        self.respond(&from, request, ServerResponse::ModelOpened(opened));
    }

    /// Creates the model; with `open` set (an auto-create open), answers by opening it.
    async fn create(
        &mut self,
        from: SessionRef,
        request: RequestId,
        creation: Creation,
        open: Option<Opened>,
    ) {
        let Creation { collection, data, nonce, permissions } = creation;
        match &self.state {
            State::Live(live) => {
                if let Some(opened) = open {
                    // Created by someone else while this client was asked for its data.
                    return self.open(from, request, None, opened);
                }
                if nonce.is_some() && live.record.nonce == nonce {
                    let response = ServerResponse::ModelCreated {
                        model: self.key.model.clone(),
                        version: live.sequencer.version(),
                        created_at: live.record.created_at,
                    };
                    return self.respond(&from, request, response);
                }
                let mut e =
                    error(ErrorCode::MODEL_ALREADY_EXISTS, "another creation owns this model id");
                e.details.insert("created_at".into(), live.record.created_at.0.to_string());
                return self.fail(&from, request, e);
            }
            State::Absent { deleted: true } => {
                let e = error(
                    ErrorCode::MODEL_ALREADY_EXISTS,
                    "a deleted model had this id; ids are not reused",
                );
                return self.fail(&from, request, e);
            }
            State::Absent { deleted: false } => {}
        }
        let config = match self.hub.collection(&self.key.domain, &collection) {
            Ok(Some(config)) => Some(config),
            Ok(None) if self.hub.config.auto_create_collections => None,
            Ok(None) => {
                let e =
                    error(ErrorCode::COLLECTION_NOT_FOUND, format!("no collection {collection}"));
                return self.fail(&from, request, e);
            }
            Err(e) => return self.fail(&from, request, error(ErrorCode::INTERNAL, e.to_string())),
        };
        let is_new_collection = config.is_none();
        let config = config.unwrap_or_default();
        if !may_create(&from.user, &config) {
            let e = error(
                ErrorCode::PERMISSION_DENIED,
                format!("creating models in {collection} is not allowed"),
            );
            return self.fail(&from, request, e);
        }
        if is_new_collection {
            self.job.writes.push(Write::PutCollection {
                domain: self.key.domain.clone(),
                collection: collection.clone(),
                config: config.clone(),
            });
        }
        let mut grants = permissions.unwrap_or_default();
        grants.users.insert(from.user.id.clone(), Permissions::ALL);
        let created_at = now();
        let record = ModelRecord {
            collection: collection.clone(),
            created_at,
            nonce,
            creator: Some(from.user.id.clone()),
            grants,
        };
        let snapshot =
            ModelSnapshot { collection, version: 0, created_at, modified_at: created_at, data };
        self.job.writes.push(Write::CreateModel {
            key: self.key.clone(),
            record: record.clone(),
            snapshot: snapshot.clone(),
        });
        let sequencer = Sequencer::new(
            self.key.model.clone(),
            snapshot,
            BTreeMap::new(),
            self.hub.config.history_in_memory,
        );
        self.state = State::Live(Box::new(Live {
            sequencer,
            record,
            collection: config,
            since_snapshot: 0,
        }));
        if let Some(opened) = open {
            self.open(from, request, None, opened);
        } else {
            let response = ServerResponse::ModelCreated {
                model: self.key.model.clone(),
                version: 0,
                created_at,
            };
            self.respond(&from, request, response);
        }
    }

    fn resync(
        &mut self,
        from: SessionRef,
        request: RequestId,
        known_version: u64,
        in_flight: Option<InFlight>,
        opened: Opened,
    ) {
        // A failed resync leaves the model closed on this connection, as the connection
        // assumes (it forgets a model whose open failed).
        let State::Live(live) = &self.state else {
            let e = self.missing();
            self.leave(from.conn());
            return self.fail(&from, request, e);
        };
        let permissions = effective(&from.user, &live.record.grants, &live.collection);
        if !permissions.read {
            let e = error(ErrorCode::PERMISSION_DENIED, "resyncing the model needs `read`");
            self.leave(from.conn());
            return self.fail(&from, request, e);
        }
        let current_version = live.sequencer.version();
        if known_version > current_version {
            self.leave(from.conn());
            let e = error(
                ErrorCode::VERSION_OUT_OF_RANGE,
                format!("known version {known_version} is ahead of the model's {current_version}"),
            );
            return self.fail(&from, request, e);
        }
        let in_flight_committed = in_flight.and_then(|f| live.sequencer.commit_of(f));
        let pages: Option<Vec<Vec<CommittedOperation>>> = live
            .sequencer
            .operations_since(known_version)
            .ok()
            .map(|ops| ops.chunks(PAGE).map(<[_]>::to_vec).collect());
        if let Some(f) = in_flight {
            self.replicas.insert(f.replica, from.conn());
        }
        self.join(&from, permissions, opened);
        let model = self.key.model.clone();
        let started = ServerResponse::ResyncStarted {
            model: model.clone(),
            current_version,
            in_flight_committed,
            permissions,
        };
        self.respond(&from, request, started);
        match pages {
            Some(pages) => {
                let count = pages.len().max(1);
                let mut pages = pages.into_iter();
                for n in 0..count {
                    let operations = pages.next().unwrap_or_default();
                    let push = ServerPush::ResyncPage {
                        model: model.clone(),
                        operations,
                        last: n + 1 == count,
                    };
                    self.push(&from.outbox, push);
                }
            }
            None => {
                // Older than memory holds: the connection's writer pages it from the store.
                let outbound = Outbound::Replay {
                    key: self.key.clone(),
                    after: known_version,
                    through: current_version,
                };
                self.job.deliveries.push(Delivery { outbox: from.outbox.clone(), outbound });
            }
        }
    }

    async fn submit(
        &mut self,
        from: SessionRef,
        replica: ReplicaId,
        seq: u64,
        base_version: u64,
        operation: Operation,
    ) {
        let model = self.key.model.clone();
        let reject = |task: &mut ModelTask, error: ErrorReply| {
            task.push(
                &from.outbox,
                ServerPush::SubmitRejected { model: model.clone(), seq, error },
            );
        };
        if !matches!(self.state, State::Live(_)) {
            let e = self.missing();
            return reject(self, e);
        }
        let Some(member) = self.open.get(&from.conn()) else {
            return reject(
                self,
                error(ErrorCode::MODEL_NOT_OPEN, "submit needs the model open on this connection"),
            );
        };
        if !member.permissions.write {
            return reject(
                self,
                error(ErrorCode::PERMISSION_DENIED, "changing the model needs `write`"),
            );
        }
        self.replicas.insert(replica, from.conn());
        let submission =
            Submission { author: from.session.clone(), replica, seq, base_version, operation };
        let outcome = match self.sequence(submission).await {
            Ok(outcome) => outcome,
            Err(e) => {
                let code = match e {
                    SequencerError::BaseVersionAhead { .. }
                    | SequencerError::HistoryUnavailable { .. } => ErrorCode::VERSION_OUT_OF_RANGE,
                    SequencerError::StaleSeq { .. } => ErrorCode::SEQ_OUT_OF_ORDER,
                    _ => ErrorCode::INVALID_OPERATION,
                };
                return reject(self, error(code, e.to_string()));
            }
        };
        match outcome {
            SubmitOutcome::Duplicate(commit) => {
                let ack = ServerPush::Ack {
                    model,
                    seq,
                    version: commit.version,
                    timestamp: commit.timestamp,
                };
                self.push(&from.outbox, ack);
            }
            SubmitOutcome::Committed(record) => {
                let operation = record.operation.clone();
                self.job.writes.push(Write::Commit { key: self.key.clone(), record });
                if let State::Live(live) = &mut self.state {
                    live.since_snapshot += 1;
                    if live.since_snapshot >= self.hub.config.snapshot_every {
                        live.since_snapshot = 0;
                        let snapshot = live.sequencer.snapshot();
                        self.job.writes.push(Write::Snapshot { key: self.key.clone(), snapshot });
                    }
                }
                self.announce(replica, seq, operation);
            }
        }
    }

    /// Orders a submission, reading older history from the store when it reaches further
    /// back than memory.
    async fn sequence(&mut self, submission: Submission) -> Result<SubmitOutcome, SequencerError> {
        let State::Live(live) = &mut self.state else { unreachable!("checked by the caller") };
        let base = submission.base_version;
        match live.sequencer.submit(submission.clone(), now()) {
            Err(SequencerError::HistoryUnavailable { from, oldest }) => {
                // What memory lacks must be durable before it can be read back.
                self.queue_job().await;
                let older = match self.hub.writer.flush().await {
                    Ok(()) => self.hub.store.operations(&self.key, from, oldest, usize::MAX),
                    Err(e) => Err(e),
                };
                let State::Live(live) = &mut self.state else {
                    unreachable!("checked by the caller")
                };
                match older {
                    Ok(older) => live.sequencer.provide_history(older),
                    Err(e) => {
                        tracing::error!(model = %self.key.model, error = %e, base, "reading history failed")
                    }
                }
                let outcome = live.sequencer.submit(submission, now());
                live.sequencer.trim_history();
                outcome
            }
            other => other,
        }
    }

    /// After a commit: the ack to the author replica's current connection, the operation to
    /// every other open session and to subscribers that do not have the model open.
    fn announce(&mut self, replica: ReplicaId, seq: u64, operation: CommittedOperation) {
        let model = self.key.model.clone();
        let author = self.replicas.get(&replica).copied();
        if let Some(conn) = author
            && let Some(member) = self.open.get(&conn)
        {
            let outbox = member.session.outbox.clone();
            let ack = ServerPush::Ack {
                model: model.clone(),
                seq,
                version: operation.version,
                timestamp: operation.timestamp,
            };
            self.push(&outbox, ack);
        }
        let others: Vec<Outbox> = self
            .open
            .iter()
            .filter(|(conn, _)| Some(**conn) != author)
            .map(|(_, m)| m.session.outbox.clone())
            .collect();
        let offline: Vec<Outbox> = self
            .subscribers
            .iter()
            .filter(|(conn, _)| !self.open.contains_key(conn))
            .map(|(_, m)| m.session.outbox.clone())
            .collect();
        if !others.is_empty() {
            let push =
                ServerPush::RemoteOperation { model: model.clone(), operation: operation.clone() };
            if let Some(frame) = frame(&ServerMessage::Push(push)) {
                for outbox in others {
                    self.say_frame(&outbox, frame.clone());
                }
            }
        }
        if !offline.is_empty() {
            let update = OfflineUpdate::Operations { operations: vec![operation], more: false };
            if let Some(frame) =
                frame(&ServerMessage::Push(ServerPush::OfflineUpdate { model, update }))
            {
                for outbox in offline {
                    self.say_frame(&outbox, frame.clone());
                }
            }
        }
    }

    fn subscribe(&mut self, from: SessionRef, known: Option<u64>) {
        let model = self.key.model.clone();
        let update = match &self.state {
            State::Absent { .. } => OfflineUpdate::Deleted,
            State::Live(live) => {
                let permissions = effective(&from.user, &live.record.grants, &live.collection);
                if !permissions.read {
                    OfflineUpdate::PermissionRevoked
                } else {
                    let update = match known {
                        Some(v) if v == live.sequencer.version() => None,
                        _ => Some(match live.sequencer.catch_up(known, PAGE) {
                            CatchUp::Operations(operations) => {
                                OfflineUpdate::Operations { operations, more: false }
                            }
                            CatchUp::Snapshot(snapshot) => {
                                OfflineUpdate::Snapshot { snapshot, permissions }
                            }
                        }),
                    };
                    self.subscribers
                        .insert(from.conn(), Member { session: from.clone(), permissions });
                    match update {
                        Some(update) => update,
                        None => return,
                    }
                }
            }
        };
        self.push(&from.outbox, ServerPush::OfflineUpdate { model, update });
    }

    fn delete(&mut self, from: SessionRef, request: RequestId) {
        if !matches!(self.state, State::Live(_)) {
            let e = self.missing();
            return self.fail(&from, request, e);
        }
        if !self.permissions_of(&from.user).remove {
            let e = error(ErrorCode::PERMISSION_DENIED, "deleting the model needs `remove`");
            return self.fail(&from, request, e);
        }
        self.job.writes.push(Write::DeleteModel { key: self.key.clone(), at: now() });
        self.state = State::Absent { deleted: true };
        self.respond(&from, request, ServerResponse::Done);
        let model = self.key.model.clone();
        let open: Vec<Outbox> = self
            .open
            .drain()
            .filter(|(c, _)| *c != from.conn())
            .map(|(_, m)| m.session.outbox)
            .collect();
        for outbox in open {
            let push = ServerPush::ModelForceClosed {
                model: model.clone(),
                code: ErrorCode::MODEL_DELETED,
                message: "the model was deleted".into(),
            };
            self.push(&outbox, push);
        }
        let subscribers: Vec<Outbox> =
            self.subscribers.drain().map(|(_, m)| m.session.outbox).collect();
        for outbox in subscribers {
            self.push(
                &outbox,
                ServerPush::OfflineUpdate { model: model.clone(), update: OfflineUpdate::Deleted },
            );
        }
        self.replicas.clear();
        self.references.clear();
    }

    fn set_permissions(&mut self, from: SessionRef, request: RequestId, grants: PermissionGrants) {
        if let Err(e) = self.managed(&from) {
            return self.fail(&from, request, e);
        }
        let State::Live(live) = &mut self.state else { return };
        live.record.grants = grants;
        self.job
            .writes
            .push(Write::SetGrants { key: self.key.clone(), record: live.record.clone() });
        self.respond(&from, request, ServerResponse::Done);
        let model = self.key.model.clone();
        let State::Live(live) = &self.state else { return };
        let changed = |members: &HashMap<ConnId, Member>| -> Vec<(ConnId, Permissions, Outbox)> {
            members
                .iter()
                .filter_map(|(conn, m)| {
                    let now = effective(&m.session.user, &live.record.grants, &live.collection);
                    (now != m.permissions).then(|| (*conn, now, m.session.outbox.clone()))
                })
                .collect()
        };
        let (open, subscribed) = (changed(&self.open), changed(&self.subscribers));
        for (conn, permissions, outbox) in open {
            if permissions.read {
                if let Some(member) = self.open.get_mut(&conn) {
                    member.permissions = permissions;
                }
                self.push(
                    &outbox,
                    ServerPush::PermissionsChanged { model: model.clone(), permissions },
                );
            } else {
                self.leave(conn);
                let push = ServerPush::ModelForceClosed {
                    model: model.clone(),
                    code: ErrorCode::PERMISSION_REVOKED,
                    message: "read permission was withdrawn".into(),
                };
                self.push(&outbox, push);
            }
        }
        for (conn, permissions, outbox) in subscribed {
            if permissions.read {
                if let Some(member) = self.subscribers.get_mut(&conn) {
                    member.permissions = permissions;
                }
            } else {
                self.subscribers.remove(&conn);
                let update = OfflineUpdate::PermissionRevoked;
                self.push(&outbox, ServerPush::OfflineUpdate { model: model.clone(), update });
            }
        }
    }

    fn reference(&mut self, from: SessionRef, change: ReferenceChange) {
        if !self.open.contains_key(&from.conn()) {
            return; // a reference on a model not open here has nobody to tell
        }
        let session = from.session.clone();
        match &change {
            ReferenceChange::Share { reference, value } => {
                self.references.insert((session.clone(), reference.clone()), value.clone());
            }
            ReferenceChange::Set { reference, value, .. } => {
                self.references.insert((session.clone(), reference.clone()), Some(value.clone()));
            }
            ReferenceChange::Clear { reference } => {
                if let Some(value) = self.references.get_mut(&(session.clone(), reference.clone()))
                {
                    *value = None;
                }
            }
            ReferenceChange::Unshare { reference } => {
                self.references.remove(&(session.clone(), reference.clone()));
            }
        }
        let push = ServerPush::RemoteReference { model: self.key.model.clone(), session, change };
        self.broadcast_except(from.conn(), &ServerMessage::Push(push));
    }
}

impl Live {
    fn restore(
        key: &ModelKey,
        stored: crate::store::StoredModel,
        hub: &Hub,
    ) -> Result<Live, StoreError> {
        let collection =
            hub.collection(&key.domain, &stored.record.collection)?.unwrap_or_default();
        let mut sequencer = Sequencer::new(
            key.model.clone(),
            stored.snapshot,
            stored.last_commits,
            hub.config.history_in_memory,
        );
        let since_snapshot = stored.operations.len() as u64;
        for operation in stored.operations {
            let version = operation.version;
            sequencer.replay(operation).map_err(|e| {
                StoreError::Corrupt(format!(
                    "model {} does not replay at version {version}: {e}",
                    key.model
                ))
            })?;
        }
        sequencer.trim_history();
        Ok(Live { sequencer, record: stored.record, collection, since_snapshot })
    }
}

/// Answers every queued command after a failed load, so that no request goes unanswered.
async fn fail_all(
    key: &ModelKey,
    hub: &Hub,
    commands: &mut mpsc::Receiver<ModelCommand>,
    cause: &StoreError,
) {
    loop {
        while let Ok(command) = commands.try_recv() {
            fail_command(key, command, cause);
        }
        match hub.unload(key, commands) {
            Ok(()) => return,
            Err(stragglers) => stragglers.into_iter().for_each(|c| fail_command(key, c, cause)),
        }
    }
}

fn fail_command(key: &ModelKey, command: ModelCommand, cause: &StoreError) {
    let reply = error(ErrorCode::INTERNAL, format!("the model could not be loaded: {cause}"));
    let (outbox, message) = match command {
        ModelCommand::Open { from, request, .. }
        | ModelCommand::Create { from, request, .. }
        | ModelCommand::Resync { from, request, .. }
        | ModelCommand::ResyncComplete { from, request, .. }
        | ModelCommand::Close { from, request }
        | ModelCommand::Delete { from, request }
        | ModelCommand::GetPermissions { from, request }
        | ModelCommand::SetPermissions { from, request, .. } => {
            (from.outbox, ServerMessage::Error { to: Some(request), error: reply })
        }
        ModelCommand::Submit { from, seq, .. } => {
            let push = ServerPush::SubmitRejected { model: key.model.clone(), seq, error: reply };
            (from.outbox, ServerMessage::Push(push))
        }
        ModelCommand::Subscribe { .. }
        | ModelCommand::Unsubscribe { .. }
        | ModelCommand::Reference { .. }
        | ModelCommand::Disconnected { .. } => return,
    };
    outbox.message(&message);
}
