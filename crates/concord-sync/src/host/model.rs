//! One model's server-side behaviour: open and auto-create, create, resync, submit,
//! subscribe and catch-up, delete, permissions, collaborators and references.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use concord_ot::{ReferenceValue, ReplicaId};
use concord_protocol::{
    Author, Collaborator, CollectionId, CommittedOperation, CreationNonce, ErrorCode, ErrorReply,
    InFlight, ModelId, ModelSnapshot, OfflineUpdate, OpenedModel, PermissionGrants, Permissions,
    ReferenceChange, ReferenceKey, RequestId, ServerMessage, ServerPush, ServerRequest,
    ServerResponse, SessionId, SharedReference, Timestamp,
};

use super::permissions::{effective, may_create};
use super::{
    CollectionConfig, ConnId, Delivery, HistoryQuery, HistoryRead, HostConfig, Job, Loaded, Member,
    Members, ModelRecord, ModelRequest, Notice, Outgoing, Read, ReadFailure, ReadResult,
    SessionRef, StoredModel, SyncRequest, SyncStep, Write, reply,
};
use crate::reference::{self, ReferenceError};
use crate::sequencer::page_len;
use crate::sequencer::{
    CatchUp, Decision, RefusalRecord, SeqCheck, Sequencer, SequencerError, Submission,
    SubmitOutcome, model_bytes,
};
use concord_protocol::{HistoryOperation, User, UserId};

/// Why a stored model cannot be served.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("model {model} does not replay at version {version}: {error}")]
    Replay { model: ModelId, version: u64, error: SequencerError },
}

/// What a `CreateModel` (or an auto-create answer) brings.
#[derive(Debug, Clone)]
struct Creation {
    collection: CollectionId,
    data: concord_ot::Document,
    nonce: Option<CreationNonce>,
    permissions: Option<PermissionGrants>,
}

#[derive(Debug)]
struct Live {
    sequencer: Sequencer,
    record: ModelRecord,
    collection: CollectionConfig,
    /// Operations committed since the last stored snapshot.
    since_snapshot: u64,
    /// The index keys last written for the model (`None`: not since it was loaded).
    indexed: Option<Vec<(concord_query::Path, Vec<u8>)>>,
    /// The user of each session that authored an operation held in memory, where known:
    /// sent with resync pages, so that a client names users it never saw open the model.
    authors: BTreeMap<SessionId, UserId>,
}

impl Live {
    /// Drops history beyond the window again, and the authors only it named.
    fn trim_history(&mut self) {
        self.sequencer.trim_history();
        self.forget_authors();
    }

    /// Forgets the users of sessions that authored none of the operations in memory, once
    /// there may be some (there are more authors than operations).
    fn forget_authors(&mut self) {
        let held = self.sequencer.operations_since(self.sequencer.oldest_known_base());
        let held = held.unwrap_or_default();
        if self.authors.len() > held.len() {
            let authoring: BTreeSet<&SessionId> = held.iter().map(|op| &op.author).collect();
            self.authors.retain(|session, _| authoring.contains(session));
        }
    }

    /// The authors of `operations` whose users are known, as a resync page sends them.
    fn authors_of(&self, operations: &[CommittedOperation]) -> Vec<Author> {
        let mut authors = BTreeMap::new();
        for operation in operations {
            if let Some(user) = self.authors.get(&operation.author) {
                authors.insert(operation.author.clone(), user.clone());
            }
        }
        super::authors_of(authors)
    }

    fn permissions(&self, user: &User) -> Permissions {
        effective(user, self.record.creator.as_ref(), &self.record.grants, &self.collection)
    }
}

#[derive(Debug)]
enum State {
    Live(Box<Live>),
    Absent { deleted: bool },
}

/// What answers a creation once it is made.
#[derive(Debug)]
enum AfterCreate {
    /// `ModelCreated`.
    Reply,
    /// An auto-create open with this attachment: `ModelOpened`.
    Open(u64),
    /// The rest of a `Sync` request.
    Sync(Box<SyncRequest>),
}

impl AfterCreate {
    /// The session's attachment a refused creation ends.
    fn attachment(&self) -> Option<u64> {
        match self {
            AfterCreate::Reply => None,
            AfterCreate::Open(attachment) => Some(*attachment),
            AfterCreate::Sync(sync) => Some(sync.attachment),
        }
    }
}

/// A request waiting for a [`Read`].
#[derive(Debug)]
enum Waiting {
    /// A request that names a replica whose owner is not known here yet; handled again
    /// once it is.
    Owner {
        now: Timestamp,
        from: SessionRef,
        replica: ReplicaId,
        request: ModelRequest,
    },
    History {
        now: Timestamp,
        from: SessionRef,
        submission: Submission,
    },
    Collection {
        now: Timestamp,
        from: SessionRef,
        request: RequestId,
        creation: Creation,
        after: AfterCreate,
    },
    /// A reference set at a version older than memory holds, waiting for the operations
    /// since then from the store.
    Reference {
        now: Timestamp,
        from: SessionRef,
        change: ReferenceChange,
    },
}

/// Whether a reference change may have the model's operations read from the store to move
/// it forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreRead {
    /// Not yet: the session host is asked to grant it first.
    Ask,
    /// The session host granted it.
    Granted,
    /// Read already: what is still too old is refused.
    Done,
}

/// How far back the server moves a reference through stored operations; one set at an
/// older version is refused ([`ReferenceError::TooOld`]).
pub const MAX_REFERENCE_CATCH_UP: u64 = 10_000;

/// One model on the server. Feed it requests with [`ModelHost::handle`]; after each call
/// take its [`Job`] ([`ModelHost::take_job`]) and its notices
/// ([`ModelHost::poll_notice`]), and answer its [`Read`] ([`ModelHost::pending_read`]) if
/// it has one. Requests that arrive while a read is pending wait, in order.
#[derive(Debug)]
pub struct ModelHost {
    model: ModelId,
    config: Arc<HostConfig>,
    state: State,
    open: Members,
    subscribers: Members,
    /// Each replica's newest connection with the model open: where its acks go, and the one
    /// connection that must not hear of its operations as someone else's. A submission may
    /// still arrive late on an older connection of the same client.
    replicas: BTreeMap<ReplicaId, ConnId>,

    references: BTreeMap<(SessionId, ReferenceKey), Option<ReferenceValue>>,
    /// Opens waiting for the client's auto-create data, by connection: the open request
    /// that a close or the data's arrival answers.
    asked: BTreeMap<ConnId, RequestId>,
    /// The users replicas are bound to, as far as this host asked (bindings never change).
    owners: BTreeMap<ReplicaId, UserId>,
    job: Job,
    notices: VecDeque<Notice>,
    read: Option<Read>,
    waiting: Option<Waiting>,
    deferred: VecDeque<(Timestamp, SessionRef, ModelRequest)>,
}

/// The refusal of a request that needed `what` from the store, which failed to read it.
fn read_failed(failure: &ReadFailure, what: &str) -> ErrorReply {
    error(failure.code(), format!("{what} could not be read: {failure}"))
}

fn error(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    reply(code, message)
}

impl ModelHost {
    /// The host of `model` as the store holds it.
    pub fn new(
        model: ModelId,
        loaded: Loaded,
        config: Arc<HostConfig>,
    ) -> Result<ModelHost, LoadError> {
        let state = match loaded {
            Loaded::Model(stored) => State::Live(Box::new(restore(&model, *stored, &config)?)),
            Loaded::Absent { deleted } => State::Absent { deleted },
        };
        Ok(ModelHost {
            model,
            config,
            state,
            open: Members::new(),
            subscribers: Members::new(),
            replicas: BTreeMap::new(),

            references: BTreeMap::new(),
            asked: BTreeMap::new(),
            owners: BTreeMap::new(),
            job: Job::default(),
            notices: VecDeque::new(),
            read: None,
            waiting: None,
            deferred: VecDeque::new(),
        })
    }

    pub fn model(&self) -> &ModelId {
        &self.model
    }

    /// The model's current version and state; `None` when it does not exist.
    pub fn live(&self) -> Option<(u64, &concord_ot::Document)> {
        match &self.state {
            State::Live(live) => Some((live.sequencer.version(), live.sequencer.document())),
            State::Absent { .. } => None,
        }
    }

    /// Nobody has the model open or subscribed and nothing is waiting: it may be unloaded
    /// (after a [`checkpoint`](ModelHost::checkpoint), once its writes are durable).
    pub fn is_idle(&self) -> bool {
        self.open.is_empty()
            && self.subscribers.is_empty()
            && self.asked.is_empty()
            && self.waiting.is_none()
            && self.deferred.is_empty()
    }

    /// Whether the model does not exist (so there is nothing to keep in memory).
    pub fn is_absent(&self) -> bool {
        matches!(self.state, State::Absent { .. })
    }

    /// Whether `conn` has the model open or subscribed.
    pub fn has_member(&self, conn: ConnId) -> bool {
        self.open.contains_key(&conn) || self.subscribers.contains_key(&conn)
    }

    /// What the requests handled so far produced.
    pub fn take_job(&mut self) -> Job {
        std::mem::take(&mut self.job)
    }

    pub fn poll_notice(&mut self) -> Option<Notice> {
        self.notices.pop_front()
    }

    /// What the host waits for before it handles anything else.
    pub fn pending_read(&self) -> Option<&Read> {
        self.read.as_ref()
    }

    /// Queues a snapshot if operations were committed since the last one (before unloading,
    /// so that the next load replays little).
    pub fn checkpoint(&mut self) {
        if let State::Live(live) = &mut self.state
            && live.since_snapshot > 0
        {
            live.since_snapshot = 0;
            live.sequencer.remeasure();
            let snapshot = live.sequencer.snapshot();
            self.job.writes.push(Write::Snapshot { model: self.model.clone(), snapshot });
        }
    }

    /// Handles one request from `from`'s session.
    pub fn handle(&mut self, now: Timestamp, from: &SessionRef, request: ModelRequest) {
        if self.waiting.is_some() {
            self.deferred.push_back((now, from.clone(), request));
            return;
        }
        match request {
            ModelRequest::Open { request, auto_create, attachment } => {
                self.open(now, from, request, auto_create, attachment)
            }
            ModelRequest::Create { request, collection, data, nonce, permissions, attachment } => {
                let after = match attachment {
                    Some(attachment) => {
                        self.asked.remove(&from.conn);
                        AfterCreate::Open(attachment)
                    }
                    None => AfterCreate::Reply,
                };
                let creation = Creation { collection, data, nonce, permissions };
                self.create(now, from, request, creation, after)
            }
            ModelRequest::Sync(sync) => self.sync(now, from, *sync),
            ModelRequest::Resync { request, known_version, in_flight, attachment } => {
                self.resync(now, from, request, known_version, in_flight, attachment)
            }
            // A model only being synced stays open too: it takes submissions until the
            // client closes it.
            ModelRequest::ResyncComplete { request } => {
                if !self.open.contains_key(&from.conn) {
                    let e = self.unavailable();
                    return self.fail(from, request, e);
                }
                let (collaborators, references) = self.presence(from.conn);
                let model = self.model.clone();
                let response = ServerResponse::ResyncCompleted { model, collaborators, references };
                self.respond(from, request, response);
            }
            ModelRequest::AutoCreateDeclined { request, message } => {
                // Unless the open already ended (the model was closed on the session).
                if self.asked.remove(&from.conn) == Some(request) {
                    let message = format!(
                        "no model {}, and the client gave no data to create it: {message}",
                        self.model
                    );
                    self.fail(from, request, error(ErrorCode::MODEL_NOT_FOUND, message));
                }
            }
            ModelRequest::Close { request } => {
                self.end_asked(from.conn);
                self.leave(from.conn);
                self.respond(from, request, ServerResponse::Done);
            }
            ModelRequest::Submit { replica, first_seq, seq, base_version, operation } => {
                let submission = Submission {
                    author: from.session.clone(),
                    replica,
                    first_seq,
                    seq,
                    base_version,
                    operation,
                };
                self.submit(now, from, submission)
            }
            ModelRequest::Subscribe { known } => self.subscribe(now, from, known),
            ModelRequest::Unsubscribe => {
                self.subscribers.remove(&from.conn);
            }
            ModelRequest::Delete { request, creation } => self.delete(now, from, request, creation),
            ModelRequest::GetPermissions { request } => match self.managed(from) {
                Ok(live) => {
                    let grants = live.record.grants.clone();
                    let model = self.model.clone();
                    self.respond(from, request, ServerResponse::Permissions { model, grants });
                }
                Err(e) => self.fail(from, request, e),
            },
            ModelRequest::SetPermissions { request, grants } => {
                self.set_permissions(from, request, grants)
            }
            ModelRequest::Reference { change, read_granted } => {
                let read = if read_granted { StoreRead::Granted } else { StoreRead::Ask };
                self.reference(now, from, change, read)
            }
            ModelRequest::History { request, query } => self.history(from, request, query),
            ModelRequest::Disconnected => {
                self.asked.remove(&from.conn);
                self.leave(from.conn);
                self.subscribers.remove(&from.conn);
            }
        }
    }

    /// The answer to [`ModelHost::pending_read`]; then the requests that waited are handled.
    pub fn handle_read(&mut self, result: ReadResult) {
        self.read = None;
        match (self.waiting.take(), result) {
            (Some(Waiting::History { now, from, submission }), ReadResult::Operations(older)) => {
                let State::Live(live) = &mut self.state else { return };
                let (replica, seq) = (submission.replica, submission.seq);
                let outcome = match older {
                    Ok(older) => {
                        let older: Vec<_> =
                            older.into_iter().map(|stored| stored.operation).collect();
                        match live.sequencer.rebase(submission, &older) {
                            Ok(rebased) => match live.sequencer.submit(rebased.clone(), now) {
                                // Still older than memory: the next page.
                                Err(SequencerError::HistoryUnavailable { from: after, oldest }) => {
                                    let read = self.history_read(after, oldest);
                                    let submission = rebased;
                                    self.wait(read, Waiting::History { now, from, submission });
                                    return;
                                }
                                outcome => outcome,
                            },
                            // The store lacks the history too: the base is older than the
                            // model keeps, for good.
                            Err(e) => {
                                let record = live.sequencer.refuse(replica, seq, e.code());
                                Ok(SubmitOutcome::Refused { record, reason: e })
                            }
                        }
                    }
                    // A store failure is the server's: not the submission's fault, and
                    // not decided (the client sends it again after resyncing).
                    Err(e) => {
                        let e = read_failed(&e, "the history the submission needs");
                        return self.reject(&from, seq, e);
                    }
                };
                self.submitted(&from, replica, seq, outcome);
            }
            (
                Some(Waiting::Collection { now, from, request, creation, after }),
                ReadResult::Collection(stored),
            ) => match stored {
                Ok(stored) => self.create_in(now, &from, request, creation, after, stored),
                Err(e) => {
                    let e = read_failed(&e, "the collection");
                    self.refuse(&from, request, after.attachment(), e);
                }
            },
            (
                Some(Waiting::Owner { now, from, replica, request }),
                ReadResult::ReplicaOwner(owner),
            ) => {
                match owner {
                    Ok(owner) => {
                        if owner == from.user.id {
                            // Bound by this use, or before: either way it is durable before
                            // anything this host commits under it.
                            let user = owner.clone();
                            self.job.writes.push(Write::BindReplica { replica, user });
                        }
                        self.owners.insert(replica, owner);
                        self.handle(now, &from, request);
                    }
                    Err(e) => {
                        let e = read_failed(&e, "the replica's owner");
                        self.fail_request(&from, request, e);
                    }
                }
            }
            // An answer to a question not asked: nothing waits on it.
            (Some(Waiting::Reference { now, from, change }), ReadResult::Operations(older)) => {
                match older {
                    Ok(older) => self.reference_through(now, &from, change, older),
                    Err(e) => {
                        let e = read_failed(&e, "the operations to move the reference");
                        self.refuse_reference(from.conn, &change, e);
                    }
                }
            }
            (waiting, _) => self.waiting = waiting,
        }
        while self.waiting.is_none()
            && let Some((now, from, request)) = self.deferred.pop_front()
        {
            self.handle(now, &from, request);
        }
    }

    /// The next page of the operations a submission based at `after` must be moved through
    /// before the in-memory window (which starts after `oldest`) takes over.
    fn history_read(&self, after: u64, oldest: u64) -> Read {
        let through = oldest.min(after.saturating_add(self.config.page.max(1) as u64));
        Read::Operations { after, through }
    }

    fn wait(&mut self, read: Read, waiting: Waiting) {
        self.read = Some(read);
        self.waiting = Some(waiting);
    }

    fn say(&mut self, to: ConnId, message: ServerMessage) {
        self.job.deliveries.push(Delivery { to: vec![to], outgoing: Outgoing::Message(message) });
    }

    fn say_all(&mut self, to: Vec<ConnId>, message: ServerMessage) {
        if !to.is_empty() {
            self.job.deliveries.push(Delivery { to, outgoing: Outgoing::Message(message) });
        }
    }

    fn respond(&mut self, to: &SessionRef, request: RequestId, response: ServerResponse) {
        self.say(to.conn, ServerMessage::Response { to: request, response });
    }

    fn fail(&mut self, to: &SessionRef, request: RequestId, error: ErrorReply) {
        self.say(to.conn, ServerMessage::Error { to: Some(request), error });
    }

    fn push(&mut self, to: ConnId, push: ServerPush) {
        self.say(to, ServerMessage::Push(push));
    }

    /// Fails a request that would have attached the model to the session, and tells the
    /// session it is not attached.
    fn refuse(
        &mut self,
        from: &SessionRef,
        request: RequestId,
        attachment: Option<u64>,
        e: ErrorReply,
    ) {
        if let Some(attachment) = attachment {
            self.closed(from.conn, attachment);
        }
        self.fail(from, request, e);
    }

    fn closed(&mut self, conn: ConnId, attachment: u64) {
        self.notices.push_back(Notice::Closed { conn, model: self.model.clone(), attachment });
        self.end_asked(conn);
    }

    /// Fails the open of `conn` that waits for its auto-create data, if there is one: the
    /// session forgets that open when the model is closed on it, so the data can no longer
    /// complete it and the open still gets its one reply.
    fn end_asked(&mut self, conn: ConnId) {
        if let Some(open) = self.asked.remove(&conn) {
            let e = error(ErrorCode::MODEL_NOT_OPEN, "the model was closed before it opened");
            self.say(conn, ServerMessage::Error { to: Some(open), error: e });
        }
    }

    /// The one answer for a model that does not exist, was deleted, or that the user may not
    /// read, so that nobody learns which ids exist from it.
    fn unavailable(&self) -> ErrorReply {
        error(
            ErrorCode::MODEL_NOT_FOUND,
            format!("no model {}, or no permission to read it", self.model),
        )
    }

    /// The answer to creating a model whose id is in use (or was): nothing more about it.
    fn taken(&self) -> ErrorReply {
        error(ErrorCode::MODEL_ALREADY_EXISTS, format!("the id {} is taken", self.model))
    }

    /// The model and the user's permissions on it, if the user may read it.
    fn readable(&self, from: &SessionRef) -> Result<(&Live, Permissions), ErrorReply> {
        match &self.state {
            State::Live(live) => {
                let permissions = live.permissions(&from.user);
                if permissions.read { Ok((live, permissions)) } else { Err(self.unavailable()) }
            }
            State::Absent { .. } => Err(self.unavailable()),
        }
    }

    /// Writes the model's keys in its collection's indexes when they changed (or were not
    /// written since it was loaded), in the job of the change.
    fn write_index(&mut self) {
        let State::Live(live) = &mut self.state else { return };
        let Some(paths) = self.config.indexes.get(&live.record.collection) else { return };
        let document = live.sequencer.document();
        let keys: Vec<(concord_query::Path, Vec<u8>)> = paths
            .iter()
            .map(|path| (path.clone(), concord_query::IndexKey::of_document(path, document)))
            .collect();
        if live.indexed.as_ref() != Some(&keys) {
            live.indexed = Some(keys.clone());
            self.job.writes.push(Write::IndexModel {
                model: self.model.clone(),
                collection: live.record.collection.clone(),
                keys,
            });
        }
    }

    /// A history request: answered from the store, up to the current version, if the
    /// session may read the model.
    fn history(&mut self, from: &SessionRef, request: RequestId, query: HistoryQuery) {
        let read = match self.readable(from) {
            Ok((live, _)) => HistoryRead {
                request,
                model: self.model.clone(),
                collection: live.record.collection.clone(),
                created_at: live.record.created_at,
                through: live.sequencer.version(),
                modified_at: live.sequencer.modified_at(),
                checkpoint_every: self.config.snapshot_every,
                query,
            },
            Err(e) => return self.fail(from, request, e),
        };
        let to = vec![from.conn];
        self.job.deliveries.push(Delivery { to, outgoing: Outgoing::History(read) });
    }

    fn managed(&self, from: &SessionRef) -> Result<&Live, ErrorReply> {
        let (live, permissions) = self.readable(from)?;
        if !permissions.manage {
            return Err(error(ErrorCode::PERMISSION_DENIED, "managing permissions needs `manage`"));
        }
        Ok(live)
    }

    /// Whether `replica` belongs to `from`'s user: `None` when this host does not know yet
    /// (then `request` waits for the owner and is handled again).
    fn owns(
        &mut self,
        now: Timestamp,
        from: &SessionRef,
        replica: ReplicaId,
        request: impl FnOnce() -> ModelRequest,
    ) -> Option<bool> {
        match self.owners.get(&replica) {
            Some(owner) => Some(*owner == from.user.id),
            None => {
                let read = Read::ReplicaOwner { replica, claimant: from.user.id.clone() };
                let waiting =
                    Waiting::Owner { now, from: from.clone(), replica, request: request() };
                self.wait(read, waiting);
                None
            }
        }
    }

    /// Fails whatever `request` was (after a read for it failed).
    fn fail_request(&mut self, from: &SessionRef, request: ModelRequest, e: ErrorReply) {
        if let ModelRequest::Sync(sync) = &request
            && sync.step == SyncStep::Submit
        {
            // Resynced already: its submission fails, and the model closes as it would.
            if let Some(submission) = &sync.submission {
                self.reject(from, submission.seq, e);
            }
            return self.sync_close(from.conn, sync.attachment);
        }
        if let ModelRequest::Sync(sync) = &request {
            self.closed(from.conn, sync.attachment);
        }
        if let ModelRequest::Open { attachment, .. }
        | ModelRequest::Resync { attachment, .. }
        | ModelRequest::Create { attachment: Some(attachment), .. } = &request
        {
            self.closed(from.conn, *attachment);
        }
        if let Some(message) = request.failure(&self.model, e) {
            self.say(from.conn, message);
        }
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
                since: m.since,
            })
            .collect();
        let own = self.open.get(&conn).map(Member::session_id);
        let references = self
            .references
            .iter()
            .filter(|((session, _), _)| Some(session) != own)
            .map(|((session, reference), value)| SharedReference {
                session: session.clone(),
                reference: reference.clone(),
                value: value.clone(),
            })
            .collect();
        (collaborators, references)
    }

    /// Adds a session to the open set (telling the others), with its permissions.
    fn join(
        &mut self,
        now: Timestamp,
        from: &SessionRef,
        permissions: Permissions,
        attachment: u64,
    ) {
        let since = self.open.get(&from.conn).map_or(now, |m| m.since);
        let member = Member { session: from.clone(), permissions, attachment, since };
        if self.open.insert(from.conn, member).is_none() {
            let collaborator =
                Collaborator { session: from.session.clone(), user: from.user.id.clone(), since };
            let push = ServerPush::CollaboratorOpened { model: self.model.clone(), collaborator };
            self.broadcast_except(from.conn, ServerMessage::Push(push));
        }
    }

    fn leave(&mut self, conn: ConnId) -> Option<Member> {
        let member = self.open.remove(&conn)?;
        self.replicas.retain(|_, c| *c != conn);
        let session = member.session.session.clone();
        self.references.retain(|(s, _), _| *s != session);
        let user = member.session.user.id.clone();
        let push = ServerPush::CollaboratorClosed { model: self.model.clone(), session, user };
        self.broadcast_except(conn, ServerMessage::Push(push));
        Some(member)
    }

    fn broadcast_except(&mut self, conn: ConnId, message: ServerMessage) {
        let targets: Vec<ConnId> = self.open.keys().copied().filter(|c| *c != conn).collect();
        self.say_all(targets, message);
    }

    fn open(
        &mut self,
        now: Timestamp,
        from: &SessionRef,
        request: RequestId,
        auto_create: Option<RequestId>,
        attachment: u64,
    ) {
        // Asked to create it if missing: whatever keeps the user from reading it (missing,
        // deleted, not permitted), the first answer is the same request for its data, so
        // that it does not tell which; creating then succeeds only for a free id.
        if let (Err(_), Some(id)) = (self.readable(from), auto_create) {
            self.asked.insert(from.conn, request);
            let request = ServerRequest::AutoCreate { model: self.model.clone() };
            return self.say(from.conn, ServerMessage::Request { id, request });
        }
        let (live, permissions) = match self.readable(from) {
            Ok(readable) => readable,
            Err(e) => return self.refuse(from, request, Some(attachment), e),
        };
        let snapshot = live.sequencer.snapshot();
        let (collaborators, references) = self.presence(from.conn);
        self.join(now, from, permissions, attachment);
        let opened = OpenedModel {
            model: self.model.clone(),
            snapshot,
            permissions,
            collaborators,
            references,
        };
        self.respond(from, request, ServerResponse::ModelOpened(opened));
    }

    /// Creates the model, then answers as `after` says.
    fn create(
        &mut self,
        now: Timestamp,
        from: &SessionRef,
        request: RequestId,
        creation: Creation,
        after: AfterCreate,
    ) {
        let attachment = after.attachment();
        match &self.state {
            State::Live(live) => {
                if let AfterCreate::Open(attachment) = after {
                    // Created by someone else while this client was asked for its data.
                    return self.open(now, from, request, None, attachment);
                }
                if creation.nonce.is_some() && live.record.nonce == creation.nonce {
                    if let AfterCreate::Sync(rest) = after {
                        // Created by this creation before (its answer was lost).
                        return self.sync(now, from, *rest);
                    }
                    let response = ServerResponse::ModelCreated {
                        model: self.model.clone(),
                        version: live.sequencer.version(),
                        created_at: live.record.created_at,
                    };
                    return self.respond(from, request, response);
                }
                let e = self.taken();
                return self.refuse(from, request, attachment, e);
            }
            // Ids of deleted models are not reused; said the same way as a taken id.
            // An auto-create open answers as the open it was.
            State::Absent { deleted: true } if matches!(after, AfterCreate::Open(_)) => {
                let e = self.unavailable();
                return self.refuse(from, request, attachment, e);
            }
            State::Absent { deleted: true } => {
                let e = self.taken();
                return self.refuse(from, request, attachment, e);
            }
            State::Absent { deleted: false } => {}
        }
        match self.config.collections.get(&creation.collection) {
            Some(config) => {
                let config = Some(config.clone());
                self.create_in(now, from, request, creation, after, config);
            }
            None => {
                let read = Read::Collection(creation.collection.clone());
                let waiting =
                    Waiting::Collection { now, from: from.clone(), request, creation, after };
                self.wait(read, waiting);
            }
        }
    }

    /// Creates the model in a collection with settings `config` (`None`: unknown).
    fn create_in(
        &mut self,
        now: Timestamp,
        from: &SessionRef,
        request: RequestId,
        creation: Creation,
        after: AfterCreate,
        config: Option<CollectionConfig>,
    ) {
        let attachment = after.attachment();
        let Creation { collection, data, nonce, permissions } = creation;
        let size = model_bytes(&data);
        if size > self.config.max_model_bytes {
            let max = self.config.max_model_bytes;
            let e = error(
                ErrorCode::MODEL_TOO_LARGE,
                format!("the model's data takes {size} bytes, more than the limit of {max}"),
            );
            return self.refuse(from, request, attachment, e);
        }
        let is_new_collection = config.is_none();
        if is_new_collection && !self.config.auto_create_collections {
            let e = error(ErrorCode::COLLECTION_NOT_FOUND, format!("no collection {collection}"));
            return self.refuse(from, request, attachment, e);
        }
        let config = config.unwrap_or_default();
        if !may_create(&from.user, &config) {
            let e = error(
                ErrorCode::PERMISSION_DENIED,
                format!("creating models in {collection} is not allowed"),
            );
            return self.refuse(from, request, attachment, e);
        }
        if is_new_collection {
            let write =
                Write::PutCollection { collection: collection.clone(), config: config.clone() };
            self.job.writes.push(write);
        }
        let mut grants = permissions.unwrap_or_default();
        grants.users.insert(from.user.id.clone(), Permissions::ALL);
        let record = ModelRecord {
            collection: collection.clone(),
            created_at: now,
            nonce,
            creator: Some(from.user.id.clone()),
            grants,
        };
        let snapshot =
            ModelSnapshot { collection, version: 0, created_at: now, modified_at: now, data };
        self.job.writes.push(Write::CreateModel {
            model: self.model.clone(),
            record: record.clone(),
            snapshot: snapshot.clone(),
        });
        let sequencer = Sequencer::new(
            self.model.clone(),
            snapshot,
            BTreeMap::new(),
            self.config.history_in_memory,
        )
        .with_max_model_bytes(self.config.max_model_bytes);
        self.state = State::Live(Box::new(Live {
            sequencer,
            record,
            collection: config,
            since_snapshot: 0,
            indexed: None,
            authors: BTreeMap::new(),
        }));
        self.write_index();
        match after {
            AfterCreate::Open(attachment) => self.open(now, from, request, None, attachment),
            AfterCreate::Sync(rest) => self.sync(now, from, *rest),
            AfterCreate::Reply => {
                let response = ServerResponse::ModelCreated {
                    model: self.model.clone(),
                    version: 0,
                    created_at: now,
                };
                self.respond(from, request, response);
            }
        }
    }

    /// A `Sync` request from its step `sync.step` on: create, resync, submit, close, each
    /// only after the one before succeeded. A step that waits for a read is taken up again
    /// after it (the request as it stands is what waits).
    fn sync(&mut self, now: Timestamp, from: &SessionRef, mut sync: SyncRequest) {
        loop {
            match sync.step {
                SyncStep::Create => {
                    sync.step = SyncStep::Resync;
                    if let Some(new) = sync.create.take() {
                        let new = *new;
                        let creation = Creation {
                            collection: new.collection,
                            data: new.data,
                            nonce: Some(new.nonce),
                            permissions: new.permissions,
                        };
                        let request = sync.request;
                        // Goes on with the resync once created (now or after a read).
                        return self.create(
                            now,
                            from,
                            request,
                            creation,
                            AfterCreate::Sync(Box::new(sync)),
                        );
                    }
                }
                SyncStep::Resync => {
                    let (request, known_version, in_flight, attachment) =
                        (sync.request, sync.known_version, sync.in_flight, sync.attachment);
                    let waiting = || ModelRequest::Sync(Box::new(sync.clone()));
                    if !self.resync_then(
                        now,
                        from,
                        request,
                        known_version,
                        in_flight,
                        attachment,
                        waiting,
                    ) {
                        return; // refused, or waiting for a read
                    }
                    sync.step = SyncStep::Submit;
                }
                SyncStep::Submit => {
                    let Some(submission) = sync.submission.clone() else {
                        sync.step = SyncStep::Close;
                        continue;
                    };
                    let submission = *submission;
                    let submission = Submission {
                        author: from.session.clone(),
                        replica: submission.replica,
                        first_seq: submission.first_seq,
                        seq: submission.seq,
                        base_version: submission.base_version,
                        operation: submission.operation,
                    };
                    // Waiting for the replica's owner, the whole step is taken up again.
                    let waiting = || ModelRequest::Sync(Box::new(sync.clone()));
                    self.submit_then(now, from, submission, waiting);
                    sync.step = SyncStep::Close;
                    sync.submission = None;
                    match &self.waiting {
                        Some(Waiting::Owner { .. }) => return,
                        // The submission is decided once the history is read: the close
                        // comes next, before anything that waited.
                        Some(_) => {
                            let close = ModelRequest::Sync(Box::new(sync));
                            self.deferred.push_front((now, from.clone(), close));
                            return;
                        }
                        None => {}
                    }
                }
                SyncStep::Close => return self.sync_close(from.conn, sync.attachment),
            }
        }
    }

    /// Ends a `Sync` request: the model closes on `conn`, unless that attachment ended
    /// already.
    fn sync_close(&mut self, conn: ConnId, attachment: u64) {
        if self.open.get(&conn).is_some_and(|m| m.attachment == attachment) {
            self.leave(conn);
            self.closed(conn, attachment);
        }
    }

    fn resync(
        &mut self,
        now: Timestamp,
        from: &SessionRef,
        request: RequestId,
        known_version: u64,
        in_flight: Option<InFlight>,
        attachment: u64,
    ) {
        let waiting = || ModelRequest::Resync { request, known_version, in_flight, attachment };
        self.resync_then(now, from, request, known_version, in_flight, attachment, waiting);
    }

    /// A resync; `waiting` is the request to take up again if it must wait for a read.
    /// Returns whether the model is now open on the connection.
    #[allow(clippy::too_many_arguments)]
    fn resync_then(
        &mut self,
        now: Timestamp,
        from: &SessionRef,
        request: RequestId,
        known_version: u64,
        in_flight: Option<InFlight>,
        attachment: u64,
        waiting: impl FnOnce() -> ModelRequest,
    ) -> bool {
        // A failed resync leaves the model closed on this connection.
        if let Err(e) = self.readable(from) {
            self.leave(from.conn);
            self.refuse(from, request, Some(attachment), e);
            return false;
        }
        // Whether the in-flight submission was committed is told only to its replica's owner.
        let in_flight = match in_flight {
            Some(f) => match self.owns(now, from, f.replica, waiting) {
                None => return false,
                Some(owned) => owned.then_some(f),
            },
            None => None,
        };
        let Ok((live, permissions)) = self.readable(from) else { return false };
        let current_version = live.sequencer.version();
        if known_version > current_version {
            let e = error(
                ErrorCode::VERSION_OUT_OF_RANGE,
                format!("known version {known_version} is ahead of the model's {current_version}"),
            );
            self.leave(from.conn);
            self.refuse(from, request, Some(attachment), e);
            return false;
        }
        let in_flight_committed = in_flight.and_then(|f| live.sequencer.commit_of(f));
        let created_at = live.record.created_at;
        let page = self.config.page.max(1);
        let pages: Option<Vec<(Vec<CommittedOperation>, Vec<Author>)>> =
            live.sequencer.operations_since(known_version).ok().map(|mut rest| {
                let mut pages = Vec::new();
                while !rest.is_empty() {
                    let (ops, after) =
                        rest.split_at(page_len(rest.iter().map(|op| &op.operation), page));
                    pages.push((ops.to_vec(), live.authors_of(ops)));
                    rest = after;
                }
                pages
            });
        self.join(now, from, permissions, attachment);
        if let Some(f) = in_flight {
            self.uses_replica(f.replica, from.conn);
        }
        let model = self.model.clone();
        let started = ServerResponse::ResyncStarted {
            model: model.clone(),
            current_version,
            in_flight_committed,
            permissions,
            created_at,
        };
        self.respond(from, request, started);
        match pages {
            Some(pages) => {
                let count = pages.len().max(1);
                let mut pages = pages.into_iter();
                for n in 0..count {
                    let (operations, authors) = pages.next().unwrap_or_default();
                    let push = ServerPush::ResyncPage {
                        model: model.clone(),
                        operations,
                        authors,
                        last: n + 1 == count,
                    };
                    self.push(from.conn, push);
                }
            }
            None => {
                // Older than memory holds: paged from the store on the way out.
                let outgoing =
                    Outgoing::Replay { model, after: known_version, through: current_version };
                self.job.deliveries.push(Delivery { to: vec![from.conn], outgoing });
            }
        }
        true
    }

    fn submit(&mut self, now: Timestamp, from: &SessionRef, submission: Submission) {
        let original = ModelRequest::Submit {
            replica: submission.replica,
            first_seq: submission.first_seq,
            seq: submission.seq,
            base_version: submission.base_version,
            operation: submission.operation.clone(),
        };
        self.submit_then(now, from, submission, || original);
    }

    /// A submission; `waiting` is the request to take up again if it must wait for its
    /// replica's owner.
    fn submit_then(
        &mut self,
        now: Timestamp,
        from: &SessionRef,
        submission: Submission,
        waiting: impl FnOnce() -> ModelRequest,
    ) {
        let (replica, seq) = (submission.replica, submission.seq);
        if !matches!(self.state, State::Live(_)) {
            let e = self.unavailable();
            return self.reject(from, seq, e);
        }
        let Some(member) = self.open.get(&from.conn) else {
            let e =
                error(ErrorCode::MODEL_NOT_OPEN, "submit needs the model open on this connection");
            return self.reject(from, seq, e);
        };
        let may_write = member.permissions.write;
        match self.owns(now, from, replica, waiting) {
            None => return,
            Some(false) => {
                let e = error(
                    ErrorCode::PERMISSION_DENIED,
                    format!("replica {} belongs to another user", replica.0),
                );
                return self.reject(from, seq, e);
            }
            Some(true) => {}
        }
        self.uses_replica(replica, from.conn);
        let State::Live(live) = &mut self.state else { return };
        if !may_write {
            // Decided like any refusal (a resubmission of an earlier decision is answered as
            // then), so that the replica's next submission follows it without a gap.
            let outcome = match live.sequencer.check_seq(replica, submission.first_seq, seq) {
                Ok(SeqCheck::New) => {
                    let record = live.sequencer.refuse(replica, seq, ErrorCode::PERMISSION_DENIED);
                    let reason = "changing the model needs `write`";
                    return self.refused(from, record, reason.into());
                }
                Ok(SeqCheck::Duplicate(decision)) => Ok(SubmitOutcome::Duplicate(decision)),
                Err(e) => Err(e),
            };
            return self.submitted(from, replica, seq, outcome);
        }
        match live.sequencer.submit(submission.clone(), now) {
            Err(SequencerError::HistoryUnavailable { from: after, oldest }) => {
                let read = self.history_read(after, oldest);
                self.wait(read, Waiting::History { now, from: from.clone(), submission });
            }
            outcome => self.submitted(from, replica, seq, outcome),
        }
    }

    /// Notes that `conn` uses `replica`, unless a newer connection of the replica has the
    /// model open (then `conn` is an older one whose last messages arrive late). Connection
    /// ids grow in the order connections are accepted.
    fn uses_replica(&mut self, replica: ReplicaId, conn: ConnId) {
        let newer = self
            .replicas
            .get(&replica)
            .is_some_and(|current| *current > conn && self.open.contains_key(current));
        if !newer {
            self.replicas.insert(replica, conn);
        }
    }

    /// The connection that hears of `replica`'s commits: its newest with the model open,
    /// else `fallback`.
    fn replica_conn(&self, replica: ReplicaId, fallback: ConnId) -> ConnId {
        self.replicas
            .get(&replica)
            .copied()
            .filter(|c| self.open.contains_key(c))
            .unwrap_or(fallback)
    }

    fn reject(&mut self, from: &SessionRef, seq: u64, error: ErrorReply) {
        let model = self.model.clone();
        self.push(from.conn, ServerPush::SubmitRejected { model, seq, error });
    }

    fn submitted(
        &mut self,
        from: &SessionRef,
        replica: ReplicaId,
        seq: u64,
        outcome: Result<SubmitOutcome, SequencerError>,
    ) {
        let outcome = match outcome {
            Ok(outcome) => outcome,
            // Nothing decided (a gap, an old seq, a store failure): nothing recorded.
            Err(e) => return self.reject(from, seq, error(e.code(), e.to_string())),
        };
        match outcome {
            SubmitOutcome::Duplicate(Decision::Committed(commit)) => {
                let ack = ServerPush::Ack {
                    model: self.model.clone(),
                    seq,
                    version: commit.version,
                    timestamp: commit.timestamp,
                };
                let to = self.replica_conn(replica, from.conn);
                self.push(to, ack);
            }
            SubmitOutcome::Duplicate(Decision::Refused(code)) => {
                let e = error(code, format!("submission {seq} was refused before ({code})"));
                let to = self.replica_conn(replica, from.conn);
                let model = self.model.clone();
                self.push(to, ServerPush::SubmitRejected { model, seq, error: e });
            }
            SubmitOutcome::Refused { record, reason } => {
                self.refused(from, record, reason.to_string());
            }
            SubmitOutcome::Committed(record) => {
                let operation = record.operation.clone();
                self.job.writes.push(Write::Commit(record));
                self.write_index();
                self.move_references(&operation.operation);
                if let State::Live(live) = &mut self.state {
                    live.authors.insert(operation.author.clone(), from.user.id.clone());
                    live.forget_authors();
                    live.since_snapshot += 1;
                    if live.since_snapshot >= self.config.snapshot_every {
                        live.since_snapshot = 0;
                        live.sequencer.remeasure();
                        let snapshot = live.sequencer.snapshot();
                        self.job
                            .writes
                            .push(Write::Snapshot { model: self.model.clone(), snapshot });
                    }
                }
                self.announce(from.conn, replica, seq, operation);
            }
        }
    }

    /// A submission refused for good: recorded (durably, before the refusal leaves), then
    /// rejected on the replica's newest connection.
    fn refused(&mut self, from: &SessionRef, record: RefusalRecord, reason: String) {
        let (replica, seq, code) = (record.replica, record.seq, record.code);
        self.job.writes.push(Write::Refusal(record));
        let to = self.replica_conn(replica, from.conn);
        let model = self.model.clone();
        self.push(to, ServerPush::SubmitRejected { model, seq, error: error(code, reason) });
    }

    /// After a commit: the ack to the author replica's newest connection, the operation to
    /// every other open session (not to the connection it came on either) and to
    /// subscribers that do not have the model open.
    fn announce(
        &mut self,
        from: ConnId,
        replica: ReplicaId,
        seq: u64,
        operation: CommittedOperation,
    ) {
        let model = self.model.clone();
        let author = self.open.contains_key(&from).then(|| self.replica_conn(replica, from));
        if let Some(conn) = author {
            let ack = ServerPush::Ack {
                model: model.clone(),
                seq,
                version: operation.version,
                timestamp: operation.timestamp,
            };
            self.push(conn, ack);
        }
        let others: Vec<ConnId> =
            self.open.keys().copied().filter(|c| Some(*c) != author && *c != from).collect();
        let offline: Vec<ConnId> =
            self.subscribers.keys().copied().filter(|c| !self.open.contains_key(c)).collect();
        if !offline.is_empty() {
            let update =
                OfflineUpdate::Operations { operations: vec![operation.clone()], more: false };
            let push = ServerPush::OfflineUpdate { model: model.clone(), update };
            self.say_all(offline, ServerMessage::Push(push));
        }
        self.say_all(others, ServerMessage::Push(ServerPush::RemoteOperation { model, operation }));
    }

    fn subscribe(&mut self, now: Timestamp, from: &SessionRef, known: Option<u64>) {
        let model = self.model.clone();
        // A model the user may not read is answered as one that does not exist.
        let update = match self.readable(from) {
            Err(_) => OfflineUpdate::Deleted,
            Ok((live, permissions)) => {
                let update = match known {
                    Some(v) if v == live.sequencer.version() => None,
                    _ => Some(match live.sequencer.catch_up(known, self.config.page) {
                        CatchUp::Operations(operations) => {
                            OfflineUpdate::Operations { operations, more: false }
                        }
                        CatchUp::Snapshot(snapshot) => {
                            OfflineUpdate::Snapshot { snapshot, permissions }
                        }
                    }),
                };
                let member =
                    Member { session: from.clone(), permissions, attachment: 0, since: now };
                self.subscribers.insert(from.conn, member);
                match update {
                    Some(update) => update,
                    None => return,
                }
            }
        };
        self.push(from.conn, ServerPush::OfflineUpdate { model, update });
    }

    /// Deletes the model; with `creation`, only if that creation made it: a client deleting
    /// its own model whose creation it never heard confirmed must not delete another
    /// creator's model of the same id, so that one is answered as absent.
    fn delete(
        &mut self,
        now: Timestamp,
        from: &SessionRef,
        request: RequestId,
        creation: Option<CreationNonce>,
    ) {
        let permissions = match self.readable(from) {
            Ok((live, _)) if creation.is_some() && live.record.nonce != creation => {
                return self.fail(from, request, self.unavailable());
            }
            Ok((_, permissions)) => permissions,
            Err(e) => return self.fail(from, request, e),
        };
        if !permissions.remove {
            let e = error(ErrorCode::PERMISSION_DENIED, "deleting the model needs `remove`");
            return self.fail(from, request, e);
        }
        self.job.writes.push(Write::DeleteModel { model: self.model.clone(), at: now });
        self.state = State::Absent { deleted: true };
        self.respond(from, request, ServerResponse::Done);
        let model = self.model.clone();
        for (conn, member) in std::mem::take(&mut self.open) {
            self.closed(conn, member.attachment);
            if conn != from.conn {
                let push = ServerPush::ModelForceClosed {
                    model: model.clone(),
                    code: ErrorCode::MODEL_DELETED,
                    message: "the model was deleted".into(),
                };
                self.push(conn, push);
            }
        }
        let subscribers: Vec<ConnId> = std::mem::take(&mut self.subscribers).into_keys().collect();
        let push = ServerPush::OfflineUpdate { model, update: OfflineUpdate::Deleted };
        self.say_all(subscribers, ServerMessage::Push(push));
        self.replicas.clear();
        self.references.clear();
    }

    fn set_permissions(&mut self, from: &SessionRef, request: RequestId, grants: PermissionGrants) {
        if let Err(e) = self.managed(from) {
            return self.fail(from, request, e);
        }
        let State::Live(live) = &mut self.state else { return };
        live.record.grants = grants;
        let write = Write::SetGrants { model: self.model.clone(), record: live.record.clone() };
        self.job.writes.push(write);
        self.respond(from, request, ServerResponse::Done);
        let model = self.model.clone();
        let State::Live(live) = &self.state else { return };
        let changed = |members: &Members| -> Vec<(ConnId, Permissions)> {
            members
                .iter()
                .filter_map(|(conn, m)| {
                    let now = live.permissions(&m.session.user);
                    (now != m.permissions).then_some((*conn, now))
                })
                .collect()
        };
        let (open, subscribed) = (changed(&self.open), changed(&self.subscribers));
        for (conn, permissions) in open {
            if permissions.read {
                if let Some(member) = self.open.get_mut(&conn) {
                    member.permissions = permissions;
                }
                self.push(
                    conn,
                    ServerPush::PermissionsChanged { model: model.clone(), permissions },
                );
            } else {
                if let Some(member) = self.leave(conn) {
                    self.closed(conn, member.attachment);
                }
                let push = ServerPush::ModelForceClosed {
                    model: model.clone(),
                    code: ErrorCode::PERMISSION_REVOKED,
                    message: "read permission was withdrawn".into(),
                };
                self.push(conn, push);
            }
        }
        for (conn, permissions) in subscribed {
            if permissions.read {
                if let Some(member) = self.subscribers.get_mut(&conn) {
                    member.permissions = permissions;
                }
            } else {
                self.subscribers.remove(&conn);
                let update = OfflineUpdate::PermissionRevoked;
                self.push(conn, ServerPush::OfflineUpdate { model: model.clone(), update });
            }
        }
    }

    /// A session's reference change: checked against the model, its value moved forward to
    /// the model's version (through the operations committed since the version it was set
    /// at), stored, and relayed at that version. An invalid one is refused and changes
    /// nothing.
    /// `may_read`: whether a value older than memory may wait for the store's operations
    /// (not again once they were read).
    fn reference(
        &mut self,
        now: Timestamp,
        from: &SessionRef,
        change: ReferenceChange,
        read: StoreRead,
    ) {
        let may_read = read != StoreRead::Done;
        if !self.open.contains_key(&from.conn) {
            return; // a reference on a model not open here has nobody to tell
        }
        let State::Live(live) = &self.state else { return };
        let version = live.sequencer.version();
        let key = |reference: &ReferenceKey| (from.session.clone(), reference.clone());
        let checked = match &change {
            ReferenceChange::Share { reference, value: None } => {
                on_element(live, reference).map(|()| None)
            }
            ReferenceChange::Share { reference, value: Some(value) } => {
                forward(live, reference, value.clone(), version)
            }
            ReferenceChange::Set { reference, value, version: at } => {
                forward(live, reference, value.clone(), *at)
            }
            ReferenceChange::Clear { .. } | ReferenceChange::Unshare { .. } => Ok(None),
        };
        let value = match checked {
            Ok(value) => value,
            // Older than memory holds: moved through the operations read from the store,
            // unless that is too far back.
            Err(ReferenceError::TooOld { version: at, .. })
                if may_read && version - at <= MAX_REFERENCE_CATCH_UP =>
            {
                let through = live.sequencer.oldest_known_base();
                if read == StoreRead::Ask {
                    // The session pays for what it makes the server read (its budget).
                    self.notices.push_back(Notice::ReferenceRead {
                        conn: from.conn,
                        model: self.model.clone(),
                        change,
                        operations: through - at,
                        now,
                    });
                    return;
                }
                // A page at a time (`reference_through`), so that no more is held.
                let through = through.min(at.saturating_add(self.config.page.max(1) as u64));
                let read = Read::Operations { after: at, through };
                return self.wait(read, Waiting::Reference { now, from: from.clone(), change });
            }
            Err(e) => {
                let e = match e {
                    // Too far back for the store's operations too.
                    ReferenceError::TooOld { version: at, .. } if may_read => {
                        let oldest = version.saturating_sub(MAX_REFERENCE_CATCH_UP);
                        ReferenceError::TooOld { version: at, oldest }
                    }
                    e => e,
                };
                let e = error(e.code(), format!("reference refused: {e}"));
                return self.refuse_reference(from.conn, &change, e);
            }
        };
        let relayed = match change {
            ReferenceChange::Share { reference, .. } => {
                self.references.insert(key(&reference), value.clone());
                ReferenceChange::Share { reference, value }
            }
            ReferenceChange::Set { reference, .. } => {
                self.references.insert(key(&reference), value.clone());
                match value {
                    Some(value) => ReferenceChange::Set { reference, value, version },
                    // Its element was removed since.
                    None => ReferenceChange::Clear { reference },
                }
            }
            ReferenceChange::Clear { reference } => {
                if let Some(value) = self.references.get_mut(&key(&reference)) {
                    *value = None;
                }
                ReferenceChange::Clear { reference }
            }
            ReferenceChange::Unshare { reference } => {
                self.references.remove(&key(&reference));
                ReferenceChange::Unshare { reference }
            }
        };
        self.relay_reference(from, relayed);
    }

    /// Tells the model's other sessions of a reference change `from` made.
    fn relay_reference(&mut self, from: &SessionRef, change: ReferenceChange) {
        let push = ServerPush::RemoteReference {
            model: self.model.clone(),
            session: from.session.clone(),
            change,
        };
        self.broadcast_except(from.conn, ServerMessage::Push(push));
    }

    /// Moves a reference set at a version older than memory through `older`, the page of
    /// stored operations right after that version, then goes on from the page's last version
    /// (the next page, or memory). Only a `Set` names an old version.
    fn reference_through(
        &mut self,
        now: Timestamp,
        from: &SessionRef,
        change: ReferenceChange,
        older: Vec<HistoryOperation>,
    ) {
        let State::Live(live) = &self.state else { return };
        let follows = |at: u64| {
            older.first().is_some_and(|op| op.operation.version == at + 1)
                && older.windows(2).all(|w| w[1].operation.version == w[0].operation.version + 1)
        };
        let (reference, value, at) = match change {
            ReferenceChange::Set { reference, value, version } if follows(version) => {
                (reference, value, version)
            }
            // The store lacks the operations: refused as too old.
            change => return self.reference(now, from, change, StoreRead::Done),
        };
        let doc = live.sequencer.document();
        let mut moved = Some(value);
        for stored in &older {
            moved = match moved {
                Some(value) => {
                    reference::transform(&reference, value, &stored.operation.operation, doc)
                }
                None => break,
            };
        }
        let version = older.last().map_or(at, |op| op.operation.version);
        match moved {
            Some(value) => {
                let change = ReferenceChange::Set { reference, value, version };
                self.reference(now, from, change, StoreRead::Granted);
            }
            // Its element was removed since: cleared, as a set moved in memory would be.
            None => {
                self.references.insert((from.session.clone(), reference.clone()), None);
                self.relay_reference(from, ReferenceChange::Clear { reference });
            }
        }
    }

    /// Tells a session that its reference change was refused, naming the reference.
    fn refuse_reference(&mut self, conn: ConnId, change: &ReferenceChange, error: ErrorReply) {
        let reference = change.reference().clone();
        let model = self.model.clone();
        self.push(conn, ServerPush::ReferenceRefused { model, reference, error });
    }

    /// Moves every stored reference through a committed operation, so that they stay at the
    /// model's version; those whose element it removed are cleared.
    fn move_references(&mut self, operation: &concord_ot::Operation) {
        let State::Live(live) = &self.state else { return };
        let doc = live.sequencer.document();
        for ((_, key), value) in self.references.iter_mut() {
            if let Some(old) = value.take() {
                *value = reference::transform(key, old, operation, doc);
            }
        }
    }

    /// The references shared on the model, at its current version (for tests and tools).
    pub fn references(
        &self,
    ) -> impl Iterator<Item = (&SessionId, &ReferenceKey, Option<&ReferenceValue>)> {
        self.references.iter().map(|((s, k), v)| (s, k, v.as_ref()))
    }
}

/// Checks that the element a reference lives on exists.
fn on_element(live: &Live, key: &ReferenceKey) -> Result<(), ReferenceError> {
    match key.element {
        Some(element) if !live.sequencer.document().contains(element) => {
            Err(ReferenceError::UnknownElement(element))
        }
        _ => Ok(()),
    }
}

/// A reference value set at version `at`, moved forward through the operations committed
/// since and checked against the model as it is now. `None`: an operation since cleared it.
fn forward(
    live: &Live,
    key: &ReferenceKey,
    value: ReferenceValue,
    at: u64,
) -> Result<Option<ReferenceValue>, ReferenceError> {
    let sequencer = &live.sequencer;
    let current = sequencer.version();
    if at > current {
        return Err(ReferenceError::VersionAhead { version: at, current });
    }
    let doc = sequencer.document();
    let since = sequencer.operations_since(at).map_err(|_| ReferenceError::TooOld {
        version: at,
        oldest: sequencer.oldest_known_base(),
    })?;
    if since.is_empty() {
        reference::check(doc, key, &value)?;
        return Ok(Some(value));
    }
    // The states in between are gone: what existed then and was removed since reads as
    // cleared, and what is left is checked against the model now.
    let mut moved = Some(value);
    for committed in since {
        moved = match moved {
            Some(value) => reference::transform(key, value, &committed.operation, doc),
            None => break,
        };
    }
    if let Some(value) = &moved {
        reference::check(doc, key, value)?;
    }
    Ok(moved)
}

/// Rebuilds a stored model: its snapshot, then the operations after it.
fn restore(model: &ModelId, stored: StoredModel, config: &HostConfig) -> Result<Live, LoadError> {
    let collection = config
        .collections
        .get(&stored.record.collection)
        .cloned()
        .or(stored.collection)
        .unwrap_or_default();
    let mut sequencer = Sequencer::new(
        model.clone(),
        stored.snapshot,
        stored.last_decisions,
        config.history_in_memory,
    )
    .with_max_model_bytes(config.max_model_bytes);
    let since_snapshot = stored.operations.len() as u64;
    for operation in stored.operations {
        let version = operation.version;
        sequencer.replay(operation).map_err(|error| LoadError::Replay {
            model: model.clone(),
            version,
            error,
        })?;
    }
    let mut live = Live {
        sequencer,
        record: stored.record,
        collection,
        since_snapshot,
        indexed: None,
        authors: stored.authors,
    };
    live.trim_history();
    Ok(live)
}
