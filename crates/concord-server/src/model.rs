//! One task per active model, driving the model's [`ModelHost`] — where every decision is
//! made — so that models never wait on each other and no lock is held around OT.
//!
//! The task loads the model, hands the host each request with the time, answers the host's
//! store reads off the async workers, routes its notices to connections, and queues what
//! it produced as one job on the store writer, which delivers the messages only once the
//! writes are durable. It unloads itself when nobody has used the model for a while.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use concord_ot::ReplicaId;
use concord_protocol::{ErrorCode, ErrorReply, Timestamp, UserId};
use concord_sync::host::{
    CollectionConfig, ConnId, HostConfig, Job as HostJob, Loaded, ModelHost, ModelRecord,
    ModelRequest, Notice, Outgoing, Read, ReadFailure, ReadResult, SessionRef, effective,
    may_create,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{Cluster, HeldElsewhere, Presence};
use crate::metrics::Metrics;
use crate::outbox::{Delivery, Outbox, frame};
use crate::registry::Registry;
use crate::store::{Job, Store, StoreError, Writer};
use crate::types::ModelKey;

/// What a connection asks of a model, with where the answers go.
#[derive(Debug)]
pub(crate) struct ModelCommand {
    pub(crate) from: SessionRef,
    pub(crate) outbox: Outbox,
    pub(crate) request: ModelRequest,
}

/// What model tasks need, and how they are started.
#[derive(Debug, Clone)]
pub(crate) struct Models {
    pub(crate) store: Store,
    pub(crate) writer: Writer,
    /// What every model host is told (shared, not copied per model).
    pub(crate) config: Arc<HostConfig>,
    /// A model nobody has open or subscribed leaves memory after this long.
    pub(crate) idle_unload: Duration,
    /// Cancelled once every connection has closed: model tasks store a snapshot and stop.
    pub(crate) stop: CancellationToken,
    pub(crate) registry: Arc<Registry<ModelKey, ModelCommand>>,
    pub(crate) tasks: TaskTracker,
    /// Which user each replica belongs to, per domain: claimed here under a lock, so that
    /// two models never bind one replica to two users.
    pub(crate) owners: Arc<Mutex<ReplicaOwners>>,
    /// When this server is a cluster node: a model is loaded only under its lease.
    pub(crate) cluster: Option<Arc<Cluster>>,
    pub(crate) metrics: Arc<Metrics>,
}

/// The user each replica of each domain belongs to, as far as this run knows.
pub(crate) type ReplicaOwners = HashMap<(Arc<str>, ReplicaId), UserId>;

impl Models {
    /// Hands `command` to the model's task, starting one if none runs.
    pub(crate) async fn send(&self, key: &ModelKey, command: ModelCommand) {
        let start = |key: ModelKey, commands| {
            self.tasks.spawn(run(key, self.clone(), commands));
        };
        self.registry.send(key, command, start).await;
    }
}

/// Commands taken into one job before it is queued, so that a busy model still writes
/// and delivers in bounded steps.
const COMMANDS_PER_JOB: usize = 1_024;

struct ModelTask {
    key: ModelKey,
    models: Models,
    host: ModelHost,
    /// Where to deliver to each connection the host may address.
    outboxes: HashMap<ConnId, Outbox>,
    /// What the commands handled so far produced, queued on the writer as one job.
    job: Job,
    /// Cancelled by the writer if a job of this model could not be written: the host is
    /// then ahead of the store, so the task closes its sessions and leaves, and the next
    /// command loads the model again from the store.
    lost: CancellationToken,
    /// Cancelled when this node loses the model's lease (cluster nodes only): another node
    /// may serve it now, so the task closes its sessions and leaves.
    lease_lost: CancellationToken,
    lease: Lease,
}

pub(crate) fn now() -> Timestamp {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    Timestamp(i64::try_from(millis).unwrap_or(i64::MAX))
}

/// Whether a model task holds its model's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lease {
    /// Leased (or not a cluster node): the task may write the model.
    Held,
    /// A cluster node's model that did not exist (or was deleted) when the task started: it
    /// is served without a lease, writing nothing, until a request that may create it
    /// comes. So a client naming model ids makes no node write a lease row for them.
    Unleased { deleted: bool },
}

/// How a model's serving ended.
enum Ended {
    Unloaded,
    /// The model was created on another node while this one served it as missing: it is
    /// served again from the store (under the lease taken), starting with this command.
    Reload(Box<ModelCommand>, CancellationToken),
}

/// Runs the task for `key` until it unloads.
async fn run(key: ModelKey, models: Models, mut commands: mpsc::Receiver<ModelCommand>) {
    let Some(cluster) = models.cluster.clone() else {
        let never = CancellationToken::new();
        serve_model(&key, &models, &mut commands, Lease::Held, never, None).await;
        return;
    };
    // Whether the model exists is read first, without its lease: only models that exist,
    // or that a request may create, are leased.
    let (lease, lease_lost) = match cluster.presence(&key).await {
        Ok(Presence::Exists { record, collection }) => match cluster.acquire(&key).await {
            Ok(Ok(lost)) => (Lease::Held, lost),
            Ok(Err(held)) => {
                let access = Some((&*record, collection));
                let reply =
                    |command: &ModelCommand| held_reply(&key, &models, command, &held, &access);
                fail_each(&key, &models, &mut commands, reply);
                return;
            }
            Err(e) => {
                tracing::error!(model = %key.model, error = %e, "leasing a model failed");
                let reason = format!("the model could not be leased: {e}");
                fail_all(&key, &models, &mut commands, ErrorCode::UNAVAILABLE, &reason);
                return;
            }
        },
        Ok(Presence::Missing) => (Lease::Unleased { deleted: false }, CancellationToken::new()),
        Ok(Presence::Deleted) => (Lease::Unleased { deleted: true }, CancellationToken::new()),
        Err(e) => {
            tracing::error!(model = %key.model, error = %e, "reading a model failed");
            let reason = format!("the model could not be read: {e}");
            fail_all(&key, &models, &mut commands, ErrorCode::UNAVAILABLE, &reason);
            return;
        }
    };
    let mut served = serve_model(&key, &models, &mut commands, lease, lease_lost, None).await;
    loop {
        match served {
            (Ended::Reload(first, lease_lost), _) => {
                let first = Some(*first);
                served =
                    serve_model(&key, &models, &mut commands, Lease::Held, lease_lost, first).await;
            }
            (Ended::Unloaded, lease) => {
                if lease == Lease::Held {
                    cluster.release(&key).await;
                }
                return;
            }
        }
    }
}

/// The answer to a request for a model another node holds: the owner is named only to a
/// user who may read the model (or, for a model that does not exist yet, create it);
/// anyone else gets the answer a single server gives to a model it cannot read.
fn held_reply(
    key: &ModelKey,
    models: &Models,
    command: &ModelCommand,
    held: &HeldElsewhere,
    access: &Option<(&ModelRecord, Option<CollectionConfig>)>,
) -> ErrorReply {
    let may_know = match access {
        None => true,
        Some((record, stored)) => {
            let collection = (models.config.collections.get(&record.collection).cloned())
                .or_else(|| stored.clone())
                .unwrap_or_default();
            let user = &command.from.user;
            effective(user, record.creator.as_ref(), &record.grants, &collection).read
        }
    };
    if may_know {
        let reason =
            format!("the model is served by node {} ({}); connect there", held.name, held.url);
        return ErrorReply::new(ErrorCode::UNAVAILABLE, reason);
    }
    let creates = match &command.request {
        ModelRequest::Create { attachment: None, .. } => true,
        ModelRequest::Sync(sync) => sync.create.is_some(),
        _ => false,
    };
    if creates {
        ErrorReply::new(ErrorCode::MODEL_ALREADY_EXISTS, format!("the id {} is taken", key.model))
    } else {
        let reason = format!("no model {}, or no permission to read it", key.model);
        ErrorReply::new(ErrorCode::MODEL_NOT_FOUND, reason)
    }
}

/// Serves the model (under its lease, or unleased while it does not exist) until it
/// unloads; `first` is handled before the queued commands. Returns how it ended and
/// whether it holds the lease then.
async fn serve_model(
    key: &ModelKey,
    models: &Models,
    commands: &mut mpsc::Receiver<ModelCommand>,
    lease: Lease,
    lease_lost: CancellationToken,
    first: Option<ModelCommand>,
) -> (Ended, Lease) {
    let (key, models) = (key.clone(), models.clone());
    let loaded = match lease {
        // Read just before: nothing to load.
        Lease::Unleased { deleted } => Ok(Loaded::Absent { deleted }),
        Lease::Held => models.store.load(&key).await,
    };
    let loaded = loaded.and_then(|loaded| {
        ModelHost::new(key.model.clone(), loaded, models.config.clone())
            .map_err(|e| StoreError::Corrupt(e.to_string()))
    });
    let host = match loaded {
        Ok(host) => host,
        Err(e) => {
            tracing::error!(model = %key.model, error = %e, "loading a model failed");
            // Answer what is queued, then leave; the next command loads again.
            let reason = format!("the model could not be loaded: {e}");
            let code = match e {
                StoreError::Unavailable(_) => ErrorCode::UNAVAILABLE,
                _ => ErrorCode::INTERNAL,
            };
            if let Some(first) = first {
                answer(&key, &models, first, ErrorReply::new(code, &reason));
            }
            fail_all(&key, &models, commands, code, &reason);
            return (Ended::Unloaded, lease);
        }
    };
    let lost = CancellationToken::new();
    let job = Job { domain: key.domain.clone(), lost: lost.clone(), ..Job::default() };
    let metrics = models.metrics.clone();
    metrics.loaded_models.inc();
    let mut task =
        ModelTask { key, models, host, outboxes: HashMap::new(), job, lost, lease_lost, lease };
    let ended = task.serve(commands, first).await;
    metrics.loaded_models.dec();
    (ended, task.lease)
}

impl ModelTask {
    async fn serve(
        &mut self,
        commands: &mut mpsc::Receiver<ModelCommand>,
        first: Option<ModelCommand>,
    ) -> Ended {
        let stop = self.models.stop.clone();
        if let Some(first) = first {
            if let Err(first) = self.take(first).await {
                return self.reload(first);
            }
            self.queue_job().await;
        }
        loop {
            // A missing model has nothing to keep: it goes as soon as nobody asks for it.
            let linger =
                if self.host.is_absent() { Duration::ZERO } else { self.models.idle_unload };
            tokio::select! {
                command = commands.recv() => {
                    let Some(command) = command else { return Ended::Unloaded };
                    if let Err(command) = self.take(command).await {
                        return self.reload(command);
                    }
                    // Take whatever else is waiting into the same job, then queue it.
                    for _ in 1..COMMANDS_PER_JOB {
                        match commands.try_recv() {
                            Ok(command) => {
                                if let Err(command) = self.take(command).await {
                                    return self.reload(command);
                                }
                            }
                            Err(_) => break,
                        }
                    }
                    self.queue_job().await;
                }
                () = tokio::time::sleep(linger), if self.host.is_idle() => {
                    if self.unload(commands).await {
                        return Ended::Unloaded;
                    }
                }
                () = self.lost.cancelled() => {
                    self.abandon(commands, "a write of this model failed; resend what was not acknowledged");
                    return Ended::Unloaded;
                }
                () = self.lease_lost.cancelled() => {
                    self.abandon(commands, "this server node no longer serves the model; reconnect and resend what was not acknowledged");
                    return Ended::Unloaded;
                }
                // Only once every connection is gone, so no command can follow.
                () = stop.cancelled() => {
                    while let Ok(command) = commands.try_recv() {
                        self.handle(command).await;
                    }
                    self.host.checkpoint();
                    self.collect();
                    self.queue_job().await;
                    if self.models.cluster.is_some() {
                        // Its lease is released next: what it wrote must be durable first.
                        let _ = self.models.writer.flush().await;
                    }
                    return Ended::Unloaded;
                }
            }
        }
    }

    /// Handles `command`, first taking the lease of a model served unleased if the command
    /// may create it; `Err(command)` if the model must be loaded again first (it was
    /// created elsewhere meanwhile).
    async fn take(&mut self, command: ModelCommand) -> Result<(), ModelCommand> {
        if self.lease == (Lease::Unleased { deleted: false }) && self.may_create(&command).await {
            let cluster = self.models.cluster.clone().expect("unleased only on a cluster node");
            match cluster.acquire(&self.key).await {
                Ok(Ok(lease_lost)) => {
                    self.lease = Lease::Held;
                    self.lease_lost = lease_lost;
                    // Granted only after the last commit of any earlier holder: the store
                    // now says whether the model is still missing.
                    match cluster.presence(&self.key).await {
                        Ok(Presence::Missing) => {}
                        Ok(_) => return Err(command),
                        Err(e) => {
                            let reason = format!("the model could not be read: {e}");
                            let reply = ErrorReply::new(ErrorCode::UNAVAILABLE, reason);
                            answer(&self.key, &self.models, command, reply);
                            return Ok(());
                        }
                    }
                }
                Ok(Err(held)) => {
                    let reply = match cluster.presence(&self.key).await {
                        Ok(Presence::Exists { record, collection }) => {
                            let access = Some((&*record, collection));
                            held_reply(&self.key, &self.models, &command, &held, &access)
                        }
                        _ => held_reply(&self.key, &self.models, &command, &held, &None),
                    };
                    answer(&self.key, &self.models, command, reply);
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(model = %self.key.model, error = %e, "leasing a model failed");
                    let reason = format!("the model could not be leased: {e}");
                    let reply = ErrorReply::new(ErrorCode::UNAVAILABLE, reason);
                    answer(&self.key, &self.models, command, reply);
                    return Ok(());
                }
            }
        }
        self.handle(command).await;
        Ok(())
    }

    /// Whether `command` creates the model and its user may create it in its collection.
    async fn may_create(&self, command: &ModelCommand) -> bool {
        let collection = match &command.request {
            ModelRequest::Create { collection, .. } => collection,
            ModelRequest::Sync(sync) => match &sync.create {
                Some(new) => &new.collection,
                None => return false,
            },
            _ => return false,
        };
        let config = match self.models.config.collections.get(collection) {
            Some(config) => Some(config.clone()),
            None => self.models.store.collection(&self.key.domain, collection).await.ok().flatten(),
        };
        match config {
            Some(config) => may_create(&command.from.user, &config),
            None => {
                self.models.config.auto_create_collections
                    && may_create(&command.from.user, &CollectionConfig::default())
            }
        }
    }

    /// Leaves a model served as missing that turned out to exist: the sessions waiting on
    /// it are closed (their clients open it again) and it is served again from the store.
    fn reload(&mut self, first: ModelCommand) -> Ended {
        let reason = "the model was created on another server node; open it again";
        for outbox in self.outboxes.values() {
            outbox.lose(reason);
        }
        Ended::Reload(Box::new(first), self.lease_lost.clone())
    }

    async fn handle(&mut self, command: ModelCommand) {
        let ModelCommand { from, outbox, request } = command;
        let conn = from.conn;
        let gone = request == ModelRequest::Disconnected;
        if !gone {
            if outbox.is_closed() {
                // The connection is closing (it did not read, or the store failed): what it
                // still asked for is dropped as if it never arrived, rather than prepared for
                // nobody. Its `Disconnected` follows.
                return;
            }
            self.outboxes.insert(conn, outbox);
        }
        self.host.handle(now(), &from, request);
        while let Some(read) = self.host.pending_read().cloned() {
            let result = self.read(read).await;
            self.host.handle_read(result);
        }
        self.collect();
        // A connection the model no longer serves gets nothing more from it.
        if !self.host.has_member(conn) {
            self.outboxes.remove(&conn);
        }
    }

    /// Takes what the host produced into the job (resolving connections while their
    /// outboxes are known, each message's bytes held against each connection's budget
    /// from here until written) and passes its notices on.
    fn collect(&mut self) {
        let HostJob { writes, deliveries } = self.host.take_job();
        self.job.writes.extend(writes);
        for delivery in deliveries {
            // Nothing is encoded for connections that are gone or closing.
            let outboxes: Vec<&Outbox> = (delivery.to.iter())
                .filter_map(|conn| self.outboxes.get(conn))
                .filter(|outbox| !outbox.is_closed())
                .collect();
            if outboxes.is_empty() {
                continue;
            }
            let resolved: Vec<Delivery> = match delivery.outgoing {
                Outgoing::Message(message) => {
                    self.models.metrics.sent(&message);
                    // Every connection has the same budget, so one encoding serves all.
                    let max_bytes = outboxes[0].max_message_bytes();
                    let Some(bytes) = frame(&message, max_bytes) else { continue };
                    (outboxes.into_iter())
                        .filter_map(|outbox| {
                            let outbound = outbox.frame(&bytes)?;
                            Some(Delivery { outbox: outbox.clone(), outbound })
                        })
                        .collect()
                }
                Outgoing::Replay { model, after, through } => {
                    let key = ModelKey { domain: self.key.domain.clone(), model };
                    (outboxes.into_iter())
                        .filter_map(|outbox| {
                            let outbound = outbox.replay(key.clone(), after, through)?;
                            Some(Delivery { outbox: outbox.clone(), outbound })
                        })
                        .collect()
                }
                Outgoing::History(read) => {
                    let key =
                        ModelKey { domain: self.key.domain.clone(), model: read.model.clone() };
                    (outboxes.into_iter())
                        .filter_map(|outbox| {
                            let outbound = outbox.history(key.clone(), read.clone())?;
                            Some(Delivery { outbox: outbox.clone(), outbound })
                        })
                        .collect()
                }
            };
            self.job.deliveries.extend(resolved);
        }
        while let Some(notice) = self.host.poll_notice() {
            let conn = notice.conn();
            if let Some(outbox) = self.outboxes.get(&conn) {
                outbox.notice(notice.clone());
                if !self.host.has_member(conn) {
                    self.outboxes.remove(&conn);
                }
            }
        }
    }

    /// Answers a host's read, off the async workers.
    async fn read(&mut self, read: Read) -> ReadResult {
        let store = self.models.store.clone();
        let key = self.key.clone();
        let failed = ReadFailure::from;
        match read {
            Read::Operations { after, through } => {
                let result = match self.flush().await {
                    Ok(()) => store.operations(&key, after, through, usize::MAX).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = &result {
                    tracing::error!(model = %self.key.model, error = %e, after, "reading history failed");
                }
                ReadResult::Operations(result.map_err(failed))
            }
            Read::Collection(collection) => {
                let result = match self.flush().await {
                    Ok(()) => store.collection(&key.domain, &collection).await,
                    Err(e) => Err(e),
                };
                ReadResult::Collection(result.map_err(failed))
            }
            Read::ReplicaOwner { replica, claimant } => ReadResult::ReplicaOwner(
                self.replica_owner(replica, claimant).await.map_err(failed),
            ),
        }
    }

    /// The user `replica` belongs to in this domain, claimed for `claimant` if it belongs to
    /// nobody yet. Claims are made under one lock for the whole server, so two models never
    /// bind a replica to two users; the store is asked only about replicas this run has not
    /// seen (its bindings never change).
    async fn replica_owner(
        &self,
        replica: ReplicaId,
        claimant: UserId,
    ) -> Result<UserId, StoreError> {
        let key = (self.key.domain.clone(), replica);
        let known = |owners: &Mutex<ReplicaOwners>| {
            owners.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned()
        };
        if let Some(owner) = known(&self.models.owners) {
            return Ok(owner);
        }
        let (store, domain) = (self.models.store.clone(), self.key.domain.clone());
        let stored = store.replica_owner(&domain, replica).await?;
        let mut owners = self.models.owners.lock().unwrap_or_else(|p| p.into_inner());
        Ok(owners.entry(key).or_insert_with(|| stored.unwrap_or(claimant)).clone())
    }

    /// Makes everything produced so far durable: what memory lacks must be durable before
    /// it can be read back.
    async fn flush(&mut self) -> Result<(), StoreError> {
        self.collect();
        self.queue_job().await;
        self.models.writer.flush().await
    }

    async fn queue_job(&mut self) {
        let next =
            Job { domain: self.key.domain.clone(), lost: self.lost.clone(), ..Job::default() };
        let job = std::mem::replace(&mut self.job, next);
        if job.writes.is_empty() && job.deliveries.is_empty() {
            return;
        }
        if self.models.writer.submit(job).await.is_err() {
            // The store stopped taking writes: the server is shutting down (fail-stop).
            for outbox in self.outboxes.values() {
                outbox.close();
            }
        }
    }

    /// After a write of this model was lost: closes every session the model serves, saying
    /// why (they may hold what the store lacks, and their clients resend what was not
    /// acknowledged), answers what is queued, and leaves the registry.
    fn abandon(&mut self, commands: &mut mpsc::Receiver<ModelCommand>, reason: &str) {
        tracing::warn!(model = %self.key.model, sessions = self.outboxes.len(), "{reason}");
        for outbox in self.outboxes.values() {
            outbox.lose(reason);
        }
        fail_all(&self.key, &self.models, commands, ErrorCode::UNAVAILABLE, reason);
    }

    /// Leaves if still idle once everything written is durable; `false` if a command came.
    async fn unload(&mut self, commands: &mut mpsc::Receiver<ModelCommand>) -> bool {
        self.host.checkpoint();
        self.collect();
        self.queue_job().await;
        if self.models.writer.flush().await.is_err() {
            return true;
        }
        match self.models.registry.unload(&self.key, commands) {
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
}

/// Answers every queued command with `reason` (after a failed load, or a lost write), so
/// that no request goes unanswered, and leaves the registry.
fn fail_all(
    key: &ModelKey,
    models: &Models,
    commands: &mut mpsc::Receiver<ModelCommand>,
    code: ErrorCode,
    reason: &str,
) {
    fail_each(key, models, commands, |_| ErrorReply::new(code, reason));
}

/// Answers every queued command with its `reply`, and leaves the registry.
fn fail_each(
    key: &ModelKey,
    models: &Models,
    commands: &mut mpsc::Receiver<ModelCommand>,
    reply: impl Fn(&ModelCommand) -> ErrorReply,
) {
    let fail = |command: ModelCommand| {
        let reply = reply(&command);
        answer(key, models, command, reply);
    };
    loop {
        while let Ok(command) = commands.try_recv() {
            fail(command);
        }
        match models.registry.unload(key, commands) {
            Ok(()) => return,
            Err(stragglers) => stragglers.into_iter().for_each(fail),
        }
    }
}

/// Answers `command` with `reply`, if it expects an answer; an open it made is closed on
/// its session, so that the client may open the model again (here or, in a cluster,
/// through the node that serves it).
fn answer(key: &ModelKey, models: &Models, command: ModelCommand, reply: ErrorReply) {
    if let Some(attachment) = command.request.attachment() {
        let (conn, model) = (command.from.conn, key.model.clone());
        command.outbox.notice(Notice::Closed { conn, model, attachment });
    }
    if let Some(message) = command.request.failure(&key.model, reply) {
        models.metrics.sent(&message);
        command.outbox.message(&message);
    }
}
