//! The simulation's server: the real session and model hosts, a queue of jobs on their way
//! to durability, and a [`MemoryServerStore`] as its disk. A crash loses the queue and
//! everything in memory; the hosts are rebuilt from the store when next asked for.
//!
//! It is public as [`crate::host_driver::HostDriver`], for the fuzz target that drives the
//! hosts with arbitrary programs. Every delivery is checked: a message that reveals a model's
//! content (its data, operations, collaborators or references) only reaches a session whose
//! user may read the model as the store holds it when the message leaves. Every deletion
//! made durable is checked too: some request asked to delete that model, by id alone or
//! naming the creation that made it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use concord_ot::ReplicaId;
use concord_protocol::{
    ClientMessage, ClientRequest, CreationNonce, Limits, ModelId, OfflineUpdate, ServerLimits,
    ServerMessage, ServerPush, ServerResponse, SessionId, Timestamp, User, UserId,
};
use concord_sync::host::{
    ActivityConfig, ActivityHost, ConnId, HostConfig, IdentityHost, IdentityLimits, Job, ModelHost,
    ModelRequest, Outgoing, PresenceHost, PresenceLimits, QueryLimits, Read, ReadFailure,
    ReadResult, SessionHost, SessionLimits, SessionOutput, SessionRef, Write, replay_page,
};

use crate::server_store::MemoryServerStore;

/// Messages for connections, in the order the server sent them.
pub type Sent = Vec<(ConnId, ServerMessage)>;

/// What a read failed as unreachable says.
pub(crate) const SIMULATED_OUTAGE: &str = "the store is unreachable (simulated)";
/// What a read failed as a store fault says; the client reports it as a `ServerFault`.
pub(crate) const SIMULATED_FAULT: &str = "the store failed this read (simulated)";

#[derive(Debug)]
pub struct SimServer {
    config: Arc<HostConfig>,
    limits: SessionLimits,
    durable: MemoryServerStore,
    /// Jobs queued and not yet durable, oldest first.
    pending: VecDeque<Job>,
    models: BTreeMap<ModelId, ModelHost>,
    sessions: BTreeMap<ConnId, SessionHost>,
    /// The domain's presence and activities (ephemeral: a crash forgets them).
    presence: PresenceHost,
    activities: ActivityHost,
    identities: IdentityHost,
    next_conn: ConnId,
    /// Replica bindings made since the last crash, durable or not (the server's claims).
    owners: BTreeMap<ReplicaId, UserId>,
    /// The last seq decided per model and replica since the last crash, durable or not.
    last_seqs: BTreeMap<(ModelId, ReplicaId), u64>,
    /// Every `(model, replica, seq)` the store holds as committed.
    committed: BTreeSet<(ModelId, ReplicaId, u64)>,
    /// Per model, the creation each deletion a client asked for named (`None`: any).
    deletions_asked: BTreeMap<ModelId, BTreeSet<Option<CreationNonce>>>,
    pub commits: usize,
    pub deletions: usize,
    /// Deletions that named a creation other than the one that made the model the store
    /// holds under that id (another client's): the server must not delete that model.
    pub deletions_of_other_creations: usize,
    pub crashes: usize,
    pub unloads: usize,
    /// How many of the next store reads fail: as unreachable (a database restarting), or
    /// with `damaged` as a store fault (answered `internal`).
    pub failing_reads: usize,
    pub damaged: bool,
    /// The reads failed so, by kind.
    pub unavailable_reads: usize,
    pub internal_reads: usize,
}

impl SimServer {
    pub fn new(config: HostConfig, limits: SessionLimits, durable: MemoryServerStore) -> SimServer {
        SimServer {
            config: Arc::new(config),
            limits,
            durable,
            pending: VecDeque::new(),
            models: BTreeMap::new(),
            sessions: BTreeMap::new(),
            presence: PresenceHost::new(PresenceLimits::default()),
            activities: ActivityHost::new(ActivityConfig::default()),
            identities: IdentityHost::new(IdentityLimits::default(), Default::default()),
            next_conn: 0,
            owners: BTreeMap::new(),
            last_seqs: BTreeMap::new(),
            committed: BTreeSet::new(),
            deletions_asked: BTreeMap::new(),
            commits: 0,
            deletions: 0,
            deletions_of_other_creations: 0,
            crashes: 0,
            unloads: 0,
            failing_reads: 0,
            damaged: false,
            unavailable_reads: 0,
            internal_reads: 0,
        }
    }

    /// The limits a handshake tells a client.
    pub fn limits(&self) -> ServerLimits {
        let codec = Limits::DEFAULT;
        self.limits.told(
            codec.max_frame_bytes,
            codec.max_message_bytes,
            self.config.max_model_bytes,
        )
    }

    pub fn durable(&self) -> &MemoryServerStore {
        &self.durable
    }

    /// A new connection whose handshake authenticated `user`.
    pub fn connect(&mut self, user: User) -> SessionRef {
        self.next_conn += 1;
        let conn = self.next_conn;
        let session = SessionRef { conn, session: SessionId(format!("session-{conn}")), user };
        self.pending.push_back(Job {
            writes: vec![Write::PutUser { user: session.user.clone() }],
            ..Job::default()
        });
        self.sessions.insert(conn, SessionHost::new(session.clone(), self.limits));
        // Nobody can follow anyone before this session's first message: nothing to send.
        self.presence.connected(&session);
        let user = &session.user;
        self.identities.learn(user.id.clone(), user.display_name.clone(), None);
        session
    }

    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.sessions.contains_key(&conn)
    }

    /// A message from the client on `conn`; what the server said meanwhile (replies, and the
    /// deliveries of jobs a store read made durable).
    pub fn receive(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        message: ClientMessage,
    ) -> Result<Sent, String> {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return Ok(Vec::new()); // the socket is closed: nothing arrives
        };
        if let ClientMessage::Request {
            request: ClientRequest::DeleteModel { model, creation },
            ..
        } = &message
        {
            let made_by = self.durable.record(model).map(|record| record.nonce);
            if creation.is_some() && made_by.is_some_and(|nonce| nonce != *creation) {
                self.deletions_of_other_creations += 1;
            }
            self.deletions_asked.entry(model.clone()).or_default().insert(*creation);
        }
        session.handle(message);
        self.dispatch(now, conn)
    }

    /// The server noticed that `conn` closed.
    pub fn close(&mut self, now: Timestamp, conn: ConnId) -> Result<Sent, String> {
        let Some(session) = self.sessions.get_mut(&conn) else { return Ok(Vec::new()) };
        session.disconnected();
        let mut sent = self.dispatch(now, conn)?;
        self.sessions.remove(&conn);
        self.presence.disconnected(conn);
        self.activities.disconnected(conn);
        sent.extend(self.ephemeral_outputs());
        Ok(sent)
    }

    fn dispatch(&mut self, now: Timestamp, conn: ConnId) -> Result<Sent, String> {
        let mut sent = Vec::new();
        loop {
            let Some(session) = self.sessions.get_mut(&conn) else { return Ok(sent) };
            let Some(output) = session.poll_output() else { return Ok(sent) };
            match output {
                SessionOutput::Reply(message) => sent.push((conn, message)),
                SessionOutput::ToModel { model, request } => {
                    let from = session.session().clone();
                    sent.extend(self.request_model(now, &from, model, request)?);
                }
                SessionOutput::ToPresence { request, presence } => {
                    let from = session.session().clone();
                    self.presence.handle(&from, request, presence);
                    sent.extend(self.ephemeral_outputs());
                }
                SessionOutput::ToActivity { request, activity } => {
                    let from = session.session().clone();
                    self.activities.handle(&from, request, activity);
                    sent.extend(self.ephemeral_outputs());
                }
                SessionOutput::ToIdentity { request, identity } => {
                    let asker = &session.session().user.id;
                    let message = match self.identities.answer(asker, identity) {
                        Ok(found) => ServerMessage::Response {
                            to: request,
                            response: ServerResponse::Identities(found),
                        },
                        Err(error) => ServerMessage::Error { to: Some(request), error },
                    };
                    sent.push((conn, message));
                }
                SessionOutput::Query(read) => {
                    let limits = QueryLimits::default();
                    sent.push((conn, self.durable.query(&read, self.config(), &limits)));
                }
            }
        }
    }

    /// What presence and activities said.
    fn ephemeral_outputs(&mut self) -> Sent {
        let mut sent = Vec::new();
        let outputs = std::iter::from_fn(|| self.presence.poll_output())
            .chain(std::iter::from_fn(|| self.activities.poll_output()));
        for output in outputs.collect::<Vec<_>>() {
            sent.extend(output.to.into_iter().map(|conn| (conn, output.message.clone())));
        }
        sent
    }

    fn request_model(
        &mut self,
        now: Timestamp,
        from: &SessionRef,
        model: ModelId,
        request: ModelRequest,
    ) -> Result<Sent, String> {
        let mut sent = Vec::new();
        if !self.models.contains_key(&model) {
            let loaded = self.durable.load(&model);
            let host = ModelHost::new(model.clone(), loaded, self.config.clone())
                .map_err(|e| format!("the server could not load {model}: {e}"))?;
            self.models.insert(model.clone(), host);
        }
        self.host(&model).handle(now, from, request);
        while let Some(read) = self.host(&model).pending_read().cloned() {
            // Store reads see durable state only, so everything queued is made durable
            // first; replica owners are the server's claims, in memory.
            self.collect(&model);
            if !matches!(read, Read::ReplicaOwner { .. }) {
                sent.extend(self.flush_all()?);
            }
            let known_owner = match &read {
                Read::ReplicaOwner { replica, .. } => self.owners.contains_key(replica),
                _ => false,
            };
            if self.failing_reads > 0 && !known_owner {
                // The server asks the store only about owners it has not claimed.
                self.failing_reads -= 1;
                let failure = if self.damaged {
                    self.internal_reads += 1;
                    ReadFailure { unavailable: false, message: SIMULATED_FAULT.into() }
                } else {
                    self.unavailable_reads += 1;
                    ReadFailure { unavailable: true, message: SIMULATED_OUTAGE.into() }
                };
                let result = match read {
                    Read::Operations { .. } => ReadResult::Operations(Err(failure)),
                    Read::Collection(_) => ReadResult::Collection(Err(failure)),
                    Read::ReplicaOwner { .. } => ReadResult::ReplicaOwner(Err(failure)),
                };
                self.host(&model).handle_read(result);
                continue;
            }
            let result = match read {
                Read::Operations { after, through } => ReadResult::Operations(Ok(self
                    .durable
                    .operations_with_users(&model, after, through, usize::MAX))),
                Read::Collection(collection) => {
                    ReadResult::Collection(Ok(self.durable.collection(&collection)))
                }
                Read::ReplicaOwner { replica, claimant } => {
                    let durable = self.durable.replica_owner(replica);
                    let owner =
                        self.owners.entry(replica).or_insert_with(|| durable.unwrap_or(claimant));
                    ReadResult::ReplicaOwner(Ok(owner.clone()))
                }
            };
            self.host(&model).handle_read(result);
        }
        self.collect(&model);
        Ok(sent)
    }

    fn host(&mut self, model: &ModelId) -> &mut ModelHost {
        self.models.get_mut(model).expect("loaded before use")
    }

    /// Queues the host's job and passes its notices to their sessions.
    fn collect(&mut self, model: &ModelId) {
        let host = self.models.get_mut(model).expect("loaded before use");
        let job = host.take_job();
        for write in &job.writes {
            match write {
                Write::Commit(record) => {
                    self.last_seqs.insert((record.model.clone(), record.replica), record.seq);
                }
                Write::Refusal(record) => {
                    self.last_seqs.insert((record.model.clone(), record.replica), record.seq);
                }
                _ => {}
            }
        }
        if !job.is_empty() {
            self.pending.push_back(job);
        }
        while let Some(notice) = host.poll_notice() {
            let conn = &notice.conn();
            if let Some(session) = self.sessions.get_mut(conn) {
                session.handle_notice(notice);
            }
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Makes the oldest queued job durable; returns its messages.
    pub fn flush_one(&mut self) -> Result<Sent, String> {
        let Some(job) = self.pending.pop_front() else { return Ok(Vec::new()) };
        for write in &job.writes {
            match write {
                Write::Commit(record) => {
                    let key = (record.model.clone(), record.replica, record.seq);
                    if !self.committed.insert(key) {
                        return Err(format!(
                            "({}, {:?}, {}) committed twice",
                            record.model, record.replica, record.seq
                        ));
                    }
                    self.commits += 1;
                }
                Write::DeleteModel { model, .. } => {
                    // Some client asked to delete this model: by id alone, or naming the
                    // creation that made it.
                    let made_by = self.durable.record(model).and_then(|record| record.nonce);
                    let asked = self.deletions_asked.get(model).is_some_and(|asked| {
                        asked.contains(&None) || (made_by.is_some() && asked.contains(&made_by))
                    });
                    if !asked {
                        return Err(format!(
                            "{model} was deleted, but no deletion named it or its creation \
                             {made_by:?}"
                        ));
                    }
                    self.committed.retain(|(m, _, _)| m != model);
                    self.deletions += 1;
                }
                _ => {}
            }
            self.durable.apply(write);
        }
        let mut sent = Vec::new();
        for delivery in job.deliveries {
            let messages = match delivery.outgoing {
                Outgoing::Message(message) => vec![message],
                Outgoing::Replay { model, after, through } => {
                    self.replay(&model, after, through)?
                }
                Outgoing::History(read) => vec![self.durable.history(&read)],
            };
            for conn in delivery.to {
                // A closed connection's messages go nowhere.
                let Some(session) = self.sessions.get(&conn) else { continue };
                for message in &messages {
                    if let Some(model) = revealed_model(message)
                        && !self.may_read(&session.session().user, model)
                    {
                        return Err(format!(
                            "{model}: {message:?} delivered to connection {conn}, whose user \
                             may not read the model"
                        ));
                    }
                }
                sent.extend(messages.iter().map(|m| (conn, m.clone())));
            }
        }
        Ok(sent)
    }

    /// The model hosts loaded now.
    pub fn loaded_models(&self) -> impl Iterator<Item = &ModelHost> {
        self.models.values()
    }

    /// Whether `user` may read `model` as the store holds it (a missing model: no).
    pub fn may_read(&self, user: &User, model: &ModelId) -> bool {
        let Some(record) = self.durable.record(model) else { return false };
        let collection = (self.config.collections.get(&record.collection).cloned())
            .or_else(|| self.durable.collection(&record.collection))
            .unwrap_or_default();
        let creator = record.creator.as_ref();
        concord_sync::host::effective(user, creator, &record.grants, &collection).read
    }

    /// The session on `conn`, while it is connected.
    pub fn session(&self, conn: ConnId) -> Option<&SessionHost> {
        self.sessions.get(&conn)
    }

    /// The configuration the hosts share.
    pub fn config(&self) -> &HostConfig {
        &self.config
    }

    pub fn flush_all(&mut self) -> Result<Sent, String> {
        let mut sent = Vec::new();
        while self.has_pending() {
            sent.extend(self.flush_one()?);
        }
        Ok(sent)
    }

    /// A replay read from the store a page at a time, as a connection's writer does.
    fn replay(
        &self,
        model: &ModelId,
        after: u64,
        through: u64,
    ) -> Result<Vec<ServerMessage>, String> {
        let mut pages = Vec::new();
        let mut from = after;
        loop {
            let operations =
                self.durable.operations_with_users(model, from, through, self.config.page);
            let (push, next) = replay_page(model, operations, through).ok_or_else(|| {
                format!("the store lacks operations ({from}, {through}] of {model}")
            })?;
            pages.push(ServerMessage::Push(push));
            match next {
                Some(next) => from = next,
                None => return Ok(pages),
            }
        }
    }

    /// The last seq of `replica` the server decided on `model`, durable or not.
    pub fn last_seq(&self, model: &ModelId, replica: ReplicaId) -> Option<u64> {
        let queued = self.last_seqs.get(&(model.clone(), replica)).copied();
        queued.max(self.durable.last_seq(model, replica))
    }

    /// Whether the store holds `(model, replica, seq)` as committed, as every ack promises.
    pub fn is_committed(&self, model: &ModelId, replica: ReplicaId, seq: u64) -> bool {
        self.committed.contains(&(model.clone(), replica, seq))
    }

    /// The process dies: queued jobs, sessions and models are lost; the store stays.
    pub fn crash(&mut self) {
        self.crashes += 1;
        self.pending.clear();
        self.owners.clear();
        self.last_seqs.clear();
        self.sessions.clear();
        self.presence = PresenceHost::new(PresenceLimits::default());
        self.activities = ActivityHost::new(ActivityConfig::default());
        self.models.clear();
    }

    /// Unloads idle models, as their tasks do after a while: a snapshot, then gone once
    /// everything queued is durable.
    pub fn unload_idle(&mut self) -> Result<Sent, String> {
        let idle: Vec<ModelId> = self
            .models
            .iter()
            .filter(|(_, host)| host.is_idle())
            .map(|(id, _)| id.clone())
            .collect();
        for model in &idle {
            self.host(model).checkpoint();
            self.collect(model);
        }
        let sent = self.flush_all()?;
        for model in idle {
            self.models.remove(&model);
            self.unloads += 1;
        }
        Ok(sent)
    }

    /// The model's state as the store rebuilds it, checked against the loaded host's.
    pub fn state(&self, model: &ModelId) -> Result<Option<(u64, concord_ot::Document)>, String> {
        let restored = ModelHost::new(model.clone(), self.durable.load(model), self.config.clone())
            .map_err(|e| format!("{model} does not load from the store: {e}"))?;
        let stored = restored.live().map(|(version, document)| (version, document.clone()));
        if let Some(host) = self.models.get(model) {
            let live = host.live().map(|(version, document)| (version, document.clone()));
            if live != stored {
                return Err(format!(
                    "{model}: the store rebuilds {stored:?}, the server holds {live:?}"
                ));
            }
        }
        Ok(stored)
    }

    /// Whether the server just told `conn` that submission `seq` of `model` was committed.
    pub fn acked(message: &ServerMessage) -> Option<(&ModelId, u64)> {
        match message {
            ServerMessage::Push(ServerPush::Ack { model, seq, .. }) => Some((model, *seq)),
            _ => None,
        }
    }
}

/// The model whose content `message` reveals, if it reveals any: a snapshot, operations,
/// collaborators or references (not acks, refusals, permission changes or closings).
fn revealed_model(message: &ServerMessage) -> Option<&ModelId> {
    match message {
        ServerMessage::Response { response, .. } => match response {
            ServerResponse::ModelOpened(opened) => Some(&opened.model),
            ServerResponse::ResyncCompleted { model, .. } => Some(model),
            ServerResponse::HistoryOpened(info) => Some(&info.model),
            ServerResponse::HistoryPage(page) => Some(&page.model),
            _ => None,
        },
        ServerMessage::Push(push) => match push {
            ServerPush::RemoteOperation { model, .. }
            | ServerPush::ResyncPage { model, .. }
            | ServerPush::CollaboratorOpened { model, .. }
            | ServerPush::RemoteReference { model, .. } => Some(model),
            ServerPush::OfflineUpdate {
                model,
                update: OfflineUpdate::Operations { .. } | OfflineUpdate::Snapshot { .. },
            } => Some(model),
            _ => None,
        },
        _ => None,
    }
}
