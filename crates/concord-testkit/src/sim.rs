//! A seeded simulation: one server (a [`Sequencer`] per model) and N clients (each a
//! [`ClientEngine`] with a store that survives crashes) editing several models over an
//! in-memory network that carries the real protocol messages.
//!
//! Each step the seed picks one event: a local edit, a storage batch becoming durable, a
//! message delivered, a disconnect (the last client messages may still arrive late, or
//! twice, or be lost), a reconnect with resync, a client crash (everything not yet durable is
//! lost) or restart from its store, a snapshot compaction. Then every client reconnects and
//! the network drains, and [`run`] checks that every replica equals the server, that its
//! store rebuilds the same model, that no submission was committed twice, and that every
//! change a store reported durable reached the server.
//!
//! Acks go to the author *replica's* current connection and remote operations to every
//! other replica's, so a submission that arrives late from a dead connection is acknowledged
//! on the new one instead of coming back as a foreign operation.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use concord_ot::ReplicaId;
use concord_protocol::{
    ClientMessage, ClientNotice, ClientRequest, CollectionId, Commit, CreationNonce, ErrorCode,
    ErrorReply, ModelId, ModelSnapshot, OfflineUpdate, Permissions, ReconnectToken, ServerMessage,
    ServerPush, ServerResponse, Session, SessionId, Timestamp, User, UserId,
};
use concord_storage::memory::MemoryStore;
use concord_storage::{Batch, MemoryAdapter, ModelRecord, Mutation, OfflineStore, StoreKey};
use concord_sync::{
    ClientEngine, DomainEvent, EngineConfig, EngineError, Event, ModelReplica, Sequencer,
    StorageBatch, StoreChange, Submission, SubmitOutcome, Time, store, store::Restored,
};
use pollster::block_on;

use crate::SimRng;
use crate::generate::{Source, gen_document, gen_operation_with};

/// The shape of a scenario.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub clients: usize,
    pub models: usize,
    pub steps: usize,
    /// The most local operations one submission carries.
    pub max_batch: usize,
    /// Compact a replica's stored server operations after this many.
    pub compact_every: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config { clients: 3, models: 2, steps: 400, max_batch: 3, compact_every: 20 }
    }
}

/// What a scenario did, for reports and for checking that it exercised something.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub local_edits: usize,
    pub commits: usize,
    pub duplicates_answered: usize,
    pub disconnects: usize,
    pub crashes: usize,
    pub resyncs: usize,
    pub models_created: usize,
    pub models_deleted: usize,
    pub subscriptions: usize,
    pub downloads: usize,
    pub creations_refused: usize,
}

impl Stats {
    pub fn add(&mut self, other: &Stats) {
        self.local_edits += other.local_edits;
        self.commits += other.commits;
        self.duplicates_answered += other.duplicates_answered;
        self.disconnects += other.disconnects;
        self.crashes += other.crashes;
        self.resyncs += other.resyncs;
        self.models_created += other.models_created;
        self.models_deleted += other.models_deleted;
        self.subscriptions += other.subscriptions;
        self.downloads += other.downloads;
        self.creations_refused += other.creations_refused;
    }
}

/// A scenario that did not converge, with its seed for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub seed: u64,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seed {}: {}", self.seed, self.reason)
    }
}

impl std::error::Error for Failure {}

#[derive(Debug)]
struct Client {
    replica: ReplicaId,
    /// `None` after a crash, until restarted from the store.
    engine: Option<ClientEngine>,
    /// The real memory backend; it survives the engine's crashes, like a disk.
    store: MemoryStore,
    /// Every model the client's store holds.
    model_ids: Vec<ModelId>,
    /// Batches on their way to durability.
    queue: VecDeque<StorageBatch>,
    connection: Option<u64>,
    epochs: u64,
    to_server: VecDeque<(u64, ClientMessage)>,
    to_client: VecDeque<ServerMessage>,
    /// Per model, the highest local seq a store batch made durable.
    max_durable_seq: BTreeMap<ModelId, u64>,
    /// Models this client created whose id another creation had taken.
    refused: BTreeSet<ModelId>,
    created: usize,
}

#[derive(Debug)]
struct Server {
    models: BTreeMap<ModelId, Sequencer>,
    /// Per client: its current connection and the models resynced on it.
    connections: Vec<Option<(u64, BTreeSet<ModelId>)>>,
    committed: BTreeSet<(ModelId, ReplicaId, u64)>,
    /// The nonce each model was created with, for idempotent creation.
    nonces: BTreeMap<ModelId, CreationNonce>,
    /// Deleted ids; this server never reuses them.
    deleted: BTreeSet<ModelId>,
    /// Per client: the offline subscription set of its current connection.
    subscribed: Vec<BTreeSet<ModelId>>,
}

/// Runs one scenario.
pub fn run(seed: u64, config: Config) -> Result<Stats, Failure> {
    let fail = |reason: String| Failure { seed, reason };
    let mut sim = Sim::new(seed, config).map_err(fail)?;
    // `CONCORD_SIM_TRACE=1` adds what happened to a failure's reason.
    if std::env::var_os("CONCORD_SIM_TRACE").is_some() {
        sim.trace = Some(Vec::new());
    }
    match sim.play() {
        Ok(()) => Ok(sim.stats),
        Err(reason) => {
            let trace = sim.trace.map(|t| t.join("\n")).unwrap_or_default();
            Err(fail(format!("{reason}\n{trace}")))
        }
    }
}

struct Sim {
    rng: SimRng,
    config: Config,
    server: Server,
    clients: Vec<Client>,
    stats: Stats,
    now: i64,
    trace: Option<Vec<String>>,
}

impl Sim {
    fn new(seed: u64, config: Config) -> Result<Sim, String> {
        let mut rng = SimRng::new(seed);
        let mut models = BTreeMap::new();
        let mut initial = BTreeMap::new();
        for m in 0..config.models.max(1) {
            let id = ModelId::new(format!("model-{m}")).map_err(|e| e.to_string())?;
            let snapshot = ModelSnapshot {
                collection: CollectionId::new("sim").map_err(|e| e.to_string())?,
                version: 0,
                created_at: Timestamp(0),
                modified_at: Timestamp(0),
                data: gen_document(&mut rng),
            };
            models.insert(
                id.clone(),
                Sequencer::new(id.clone(), snapshot.clone(), BTreeMap::new(), 100_000),
            );
            initial.insert(id, snapshot);
        }
        let engine_config = engine_config(config);
        let adapter = MemoryAdapter::new();
        let clients = (0..config.clients)
            .map(|i| {
                let replica = ReplicaId(i as u64 + 1);
                let mut engine = ClientEngine::new(replica, engine_config);
                let key = StoreKey::new("sim", format!("user-{i}"));
                let store = adapter.open_store(&key).map_err(|e| e.to_string())?;
                let mut batch = Batch { mutations: vec![Mutation::SetReplicaId(replica)] };
                for (id, snapshot) in &initial {
                    engine
                        .add_model(id.clone(), ModelReplica::new(snapshot.clone()).into())
                        .expect("new");
                    let record = ModelRecord::new(id.clone(), snapshot.collection.clone());
                    batch.mutations.push(Mutation::PutModel(record));
                    let snapshot = store::to_stored(snapshot);
                    batch.mutations.push(Mutation::PutSnapshot { model: id.clone(), snapshot });
                }
                block_on(store.commit(batch)).map_err(|e| e.to_string())?;
                Ok(Client {
                    replica,
                    engine: Some(engine),
                    store,
                    model_ids: initial.keys().cloned().collect(),
                    queue: VecDeque::new(),
                    connection: None,
                    epochs: 0,
                    to_server: VecDeque::new(),
                    to_client: VecDeque::new(),
                    max_durable_seq: BTreeMap::new(),
                    refused: BTreeSet::new(),
                    created: 0,
                })
            })
            .collect::<Result<Vec<Client>, String>>()?;
        let server = Server {
            models,
            connections: vec![None; config.clients],
            committed: BTreeSet::new(),
            nonces: BTreeMap::new(),
            deleted: BTreeSet::new(),
            subscribed: vec![BTreeSet::new(); config.clients],
        };
        Ok(Sim { rng, config, server, clients, stats: Stats::default(), now: 0, trace: None })
    }

    fn play(&mut self) -> Result<(), String> {
        for i in 0..self.clients.len() {
            self.connect(i)?;
        }
        for _ in 0..self.config.steps {
            self.now += 1;
            let i = self.rng.below(self.clients.len());
            let roll = self.rng.below(100);
            let now = self.now;
            self.note(|| format!("step {now}: client {i} roll {roll}"));
            match roll {
                0..=24 => self.local_edit(i)?,
                25..=39 => self.flush_one(i)?,
                40..=54 => self.deliver_to_server(i)?,
                55..=74 => self.deliver_to_client(i)?,
                75..=84 => {
                    if self.clients[i].connection.is_some() {
                        self.disconnect(i)?;
                    } else if self.clients[i].engine.is_some() {
                        self.connect(i)?;
                    }
                }
                85..=89 => self.close_or_open(i)?,
                90..=91 => self.create(i)?,
                92 => self.delete(i)?,
                93..=94 => self.subscribe(i)?,
                _ => self.crash_or_restart(i)?,
            }
        }
        self.settle()?;
        self.check()
    }

    /// Restarts and reconnects everyone, then runs until nothing moves; then opens every
    /// model everywhere and runs again.
    fn settle(&mut self) -> Result<(), String> {
        for i in 0..self.clients.len() {
            if self.clients[i].engine.is_none() {
                self.restart(i)?;
            }
            if self.clients[i].connection.is_none() {
                self.connect(i)?;
            }
        }
        self.run_until_quiet()?;
        for i in 0..self.clients.len() {
            let models = self.clients[i].model_ids.clone();
            for model in models {
                self.open(i, &model)?;
            }
        }
        self.run_until_quiet()
    }

    fn run_until_quiet(&mut self) -> Result<(), String> {
        for _ in 0..100_000 {
            self.now += 1;
            let mut moved = false;
            for i in 0..self.clients.len() {
                while !self.clients[i].queue.is_empty() {
                    self.flush_one(i)?;
                    moved = true;
                }
                while !self.clients[i].to_server.is_empty() {
                    self.deliver_to_server(i)?;
                    moved = true;
                }
                while !self.clients[i].to_client.is_empty() {
                    self.deliver_to_client(i)?;
                    moved = true;
                }
            }
            if !moved {
                return Ok(());
            }
        }
        Err("the network never went quiet".into())
    }

    fn check(&self) -> Result<(), String> {
        for client in &self.clients {
            let engine = client.engine.as_ref().expect("restarted");
            let summaries = block_on(client.store.models()).map_err(|e| e.to_string())?;
            for model in engine.subscriptions() {
                let stored = summaries.iter().any(|m| m.record.id == *model);
                if self.server.models.contains_key(model) && !stored {
                    return Err(format!(
                        "replica {:?}: subscribed {model} was never downloaded",
                        client.replica
                    ));
                }
            }
            if let Some(tombstone) = summaries.iter().find(|m| m.record.deleted_locally) {
                return Err(format!(
                    "replica {:?}: the deletion of {} was never confirmed",
                    client.replica, tombstone.record.id
                ));
            }
            for id in &client.model_ids {
                let replica = engine.model(id).ok_or_else(|| format!("{id} not loaded"))?;
                let who = format!("replica {:?}, {id}", client.replica);
                if client.refused.contains(id) {
                    // Another creation owns the id: the local data must still be there.
                    if engine.is_settled(id) {
                        return Err(format!("{who}: a refused creation went live"));
                    }
                    continue;
                }
                let Some(sequencer) = self.server.models.get(id) else {
                    // Deleted by another client: the local copy stays, offline.
                    if !self.server.deleted.contains(id) {
                        return Err(format!("{who}: not at the server"));
                    }
                    if engine.is_settled(id) {
                        return Err(format!("{who}: a deleted model is live"));
                    }
                    continue;
                };
                if !engine.is_settled(id) {
                    return Err(format!("{who}: not settled (unacknowledged changes or not live)"));
                }
                if replica.confirmed_version() != sequencer.version() {
                    return Err(format!(
                        "{who}: at version {}, the server at {}",
                        replica.confirmed_version(),
                        sequencer.version()
                    ));
                }
                if replica.local() != sequencer.document() {
                    return Err(format!(
                        "{who} diverged:\n  replica {}\n  server  {}",
                        replica.local().to_json(),
                        sequencer.document().to_json()
                    ));
                }
                let stored = client.restore(id)?;
                if stored.replica.local() != sequencer.document() {
                    return Err(format!("{who}: the store rebuilds a different model"));
                }
                let committed_through = self
                    .server
                    .committed
                    .iter()
                    .filter(|(m, r, _)| m == id && *r == client.replica)
                    .map(|(_, _, seq)| *seq)
                    .max()
                    .unwrap_or(0);
                let durable = client.max_durable_seq.get(id).copied().unwrap_or(0);
                if committed_through < durable {
                    return Err(format!(
                        "{who}: durable change {durable} never reached the server (committed through {committed_through})"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Creates a model (offline or not); now and then under an id another client may
    /// create too, so that one of the two creations is refused.
    fn create(&mut self, i: usize) -> Result<(), String> {
        let client = &mut self.clients[i];
        let Some(engine) = &mut client.engine else { return Ok(()) };
        let id = if self.rng.below(5) == 0 {
            format!("shared-{}", self.rng.below(3))
        } else {
            client.created += 1;
            format!("c{i}-{}", client.created)
        };
        let model = ModelId::new(id).map_err(|e| e.to_string())?;
        if client.model_ids.contains(&model) {
            return Ok(());
        }
        if let Some(trace) = &mut self.trace {
            trace.push(format!("  client {i} creates {model}"));
        }
        let data = gen_document(&mut self.rng);
        let nonce = CreationNonce(std::array::from_fn(|_| self.rng.below(256) as u8));
        let collection = CollectionId::new("sim").map_err(|e| e.to_string())?;
        match engine.create_model(model.clone(), collection, data, nonce, Timestamp(self.now)) {
            Ok(()) => {}
            // The id's deletion is not confirmed yet: the application must wait.
            Err(EngineError::DeletionPending(_)) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        // A new model under an id this client may have had before: its own history.
        client.max_durable_seq.remove(&model);
        client.model_ids.push(model);
        self.stats.models_created += 1;
        self.drain(i)
    }

    /// Subscribes to a model the client does not have yet.
    fn subscribe(&mut self, i: usize) -> Result<(), String> {
        let client = &mut self.clients[i];
        let Some(engine) = &mut client.engine else { return Ok(()) };
        let stored = block_on(client.store.models()).map_err(|e| e.to_string())?;
        let candidates: Vec<&ModelId> = self
            .server
            .models
            .keys()
            .filter(|m| !stored.iter().any(|s| s.record.id == **m) && !client.model_ids.contains(m))
            .filter(|m| engine.subscriptions().all(|s| s != *m))
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let model = candidates[self.rng.below(candidates.len())].clone();
        if let Some(trace) = &mut self.trace {
            trace.push(format!("  client {i} subscribes to {model}"));
        }
        engine.subscribe(vec![(model, None)]);
        self.stats.subscriptions += 1;
        self.drain(i)
    }

    /// Deletes one of the client's models (offline or not).
    fn delete(&mut self, i: usize) -> Result<(), String> {
        let client = &mut self.clients[i];
        let Some(engine) = &mut client.engine else { return Ok(()) };
        // A refused creation is not the server's model of that id: leave it alone.
        let candidates: Vec<usize> = (0..client.model_ids.len())
            .filter(|&n| !client.refused.contains(&client.model_ids[n]))
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let model = client.model_ids.remove(candidates[self.rng.below(candidates.len())]);
        let collection = CollectionId::new("sim").map_err(|e| e.to_string())?;
        if let Some(trace) = &mut self.trace {
            trace.push(format!("  client {i} deletes {model}"));
        }
        engine.delete_model(model, collection);
        self.drain(i)
    }

    fn local_edit(&mut self, i: usize) -> Result<(), String> {
        let client = &mut self.clients[i];
        let Some(engine) = &mut client.engine else {
            return Ok(());
        };
        let models: Vec<ModelId> = engine.models().cloned().collect();
        if models.is_empty() {
            return Ok(());
        }
        let model = models[self.rng.below(models.len())].clone();
        let rng = &mut self.rng;
        engine
            .local_edit(&model, |doc, ids| {
                Ok::<_, EngineError>(gen_operation_with(rng, doc, ids, None))
            })
            .map_err(|e| format!("local edit failed: {e}"))?;
        self.stats.local_edits += 1;
        self.drain(i)
    }

    /// Closes a model the application has open (its changes stay in the store), or opens
    /// a stored one.
    fn close_or_open(&mut self, i: usize) -> Result<(), String> {
        let models = &self.clients[i].model_ids;
        if models.is_empty() {
            return Ok(());
        }
        let model = models[self.rng.below(models.len())].clone();
        let Some(engine) = &self.clients[i].engine else { return Ok(()) };
        if engine.model(&model).is_some() && self.rng.flip() {
            self.flush_all(i)?;
            let engine = self.clients[i].engine.as_mut().expect("checked");
            engine.remove_model(&model);
            Ok(())
        } else {
            self.open(i, &model)
        }
    }

    fn open(&mut self, i: usize, model: &ModelId) -> Result<(), String> {
        let Some(engine) = &mut self.clients[i].engine else { return Ok(()) };
        if engine.model(model).is_some() {
            engine.keep_loaded(model);
            return Ok(());
        }
        self.flush_all(i)?;
        let client = &mut self.clients[i];
        let restored = client.restore(model)?;
        let engine = client.engine.as_mut().expect("checked");
        engine.add_model(model.clone(), restored).map_err(|e| e.to_string())?;
        self.drain(i)
    }

    fn flush_all(&mut self, i: usize) -> Result<(), String> {
        while !self.clients[i].queue.is_empty() {
            self.flush_one(i)?;
        }
        Ok(())
    }

    /// Moves what the engine produced onto the store queue and the wire; checks events;
    /// serves loads once the queue is durable.
    fn drain(&mut self, i: usize) -> Result<(), String> {
        self.drain_outputs(i)?;
        loop {
            let Some(engine) = &mut self.clients[i].engine else { return Ok(()) };
            let Some(model) = engine.poll_load() else { return Ok(()) };
            if let Some(trace) = &mut self.trace {
                trace.push(format!("  client {i} loads {model}"));
            }
            self.flush_all(i)?;
            let client = &mut self.clients[i];
            let restored = client.restore(&model)?;
            let engine = client.engine.as_mut().expect("checked");
            engine.handle_loaded(model, Some(restored));
            self.drain_outputs(i)?;
        }
    }

    fn drain_outputs(&mut self, i: usize) -> Result<(), String> {
        let now = self.time();
        let client = &mut self.clients[i];
        let Some(engine) = &mut client.engine else {
            return Ok(());
        };
        while let Some(batch) = engine.poll_storage() {
            client.queue.push_back(batch);
        }
        while let Some(message) = engine.poll_transmit(Time::from_millis(now)) {
            if let Some(connection) = client.connection {
                client.to_server.push_back((connection, message));
            }
        }
        while let Some(event) = engine.poll_event() {
            if let Some(trace) = &mut self.trace {
                trace.push(format!("  client {i} event: {event:?}"));
            }
            let Event::Domain(event) = event else { continue };
            match event {
                // Edits of a model someone deleted meanwhile are refused: expected.
                DomainEvent::ChangesRejected { error, .. }
                    if error.code == ErrorCode::MODEL_NOT_FOUND => {}
                DomainEvent::ChangesRejected { model, error } => {
                    return Err(format!(
                        "replica {:?}: {model}: a submission was rejected: {error}",
                        client.replica
                    ));
                }
                DomainEvent::ProtocolViolation { model, error } => {
                    return Err(format!("replica {:?}: {model}: {error}", client.replica));
                }
                DomainEvent::Downloaded { model } => {
                    client.max_durable_seq.remove(&model);
                    client.model_ids.push(model);
                    self.stats.downloads += 1;
                }
                DomainEvent::DeletionRefused { model, error } => {
                    return Err(format!("{model}: deletion refused: {error}"));
                }
                DomainEvent::CreationRefused { model, error } => {
                    if error.code != ErrorCode::MODEL_ALREADY_EXISTS {
                        return Err(format!("{model}: creation refused: {error}"));
                    }
                    client.refused.insert(model);
                    self.stats.creations_refused += 1;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Makes the oldest queued batch durable.
    fn flush_one(&mut self, i: usize) -> Result<(), String> {
        let client = &mut self.clients[i];
        let Some(batch) = client.queue.pop_front() else {
            return Ok(());
        };
        for change in &batch.changes {
            if let StoreChange::AppendPending(p) = change {
                let max = client.max_durable_seq.entry(batch.model.clone()).or_default();
                *max = (*max).max(p.seq);
            }
        }
        let id = batch.id;
        let mutations = store::batch_mutations(batch);
        block_on(client.store.commit(Batch { mutations }))
            .map_err(|e| format!("the store refused the engine's batch: {e}"))?;
        if let Some(engine) = &mut client.engine {
            engine.handle_durable(id);
        }
        self.drain(i)
    }

    fn connect(&mut self, i: usize) -> Result<(), String> {
        let now = Time::from_millis(self.time());
        let client = &mut self.clients[i];
        let Some(engine) = &mut client.engine else {
            return Ok(());
        };
        client.epochs += 1;
        client.connection = Some(client.epochs);
        client.to_client.clear();
        self.server.connections[i] = Some((client.epochs, BTreeSet::new()));
        self.server.subscribed[i].clear();
        self.stats.resyncs += 1;
        let loaded: Vec<&ModelId> = engine.models().collect();
        let summaries = block_on(client.store.models()).map_err(|e| e.to_string())?;
        let with_changes = store::with_changes(&summaries, &loaded);
        let session = Session {
            session: SessionId(format!("{i}-{}", client.epochs)),
            user: User { id: UserId(format!("user-{i}")), display_name: None, anonymous: false },
            reconnect_token: ReconnectToken(format!("{i}")),
            server_version: "sim".into(),
        };
        engine.handle_connected(now, &session, with_changes, store::tombstones(&summaries));
        self.drain(i)
    }

    fn disconnect(&mut self, i: usize) -> Result<(), String> {
        let now = Time::from_millis(self.time());
        self.stats.disconnects += 1;
        let client = &mut self.clients[i];
        client.connection = None;
        client.to_client.clear();
        self.server.connections[i] = None;
        if let Some(engine) = &mut client.engine {
            engine.handle_disconnected(now);
        }
        // What was on its way to the server may still arrive, late, or twice, or be lost.
        let mut late = VecDeque::new();
        for message in client.to_server.drain(..) {
            match self.rng.below(4) {
                0 => {}
                1 => {
                    late.push_back(message.clone());
                    late.push_back(message);
                }
                _ => late.push_back(message),
            }
        }
        client.to_server = late;
        self.drain(i)
    }

    fn crash_or_restart(&mut self, i: usize) -> Result<(), String> {
        if self.clients[i].engine.is_none() {
            return self.restart(i);
        }
        self.stats.crashes += 1;
        if self.clients[i].connection.is_some() {
            self.disconnect(i)?;
        }
        let client = &mut self.clients[i];
        client.engine = None;
        client.queue.clear();
        Ok(())
    }

    fn restart(&mut self, i: usize) -> Result<(), String> {
        let client = &mut self.clients[i];
        let mut engine = ClientEngine::new(client.replica, engine_config(self.config));
        // A creation lost with the crash (never durable, so never sent) is gone.
        let summaries = block_on(client.store.models()).map_err(|e| e.to_string())?;
        if let Some(trace) = &mut self.trace {
            trace.push(format!("  client {i} restarts with {summaries:?}"));
        }
        engine.add_tombstones(store::tombstones(&summaries));
        let subscriptions = block_on(client.store.subscriptions()).map_err(|e| e.to_string())?;
        let subscriptions = subscriptions
            .into_iter()
            .map(|model| {
                let stored = summaries.iter().find(|s| s.record.id == model);
                let version = stored.and_then(|s| s.confirmed_version);
                (model, version)
            })
            .collect();
        engine.add_subscriptions(subscriptions);
        client.model_ids = summaries
            .into_iter()
            .filter(|m| !m.record.deleted_locally)
            .map(|m| m.record.id)
            .collect();
        // The application reopens some of its models; the others sync in the background.
        for id in client.model_ids.clone() {
            if self.rng.flip() {
                let restored = client.restore(&id)?;
                engine.add_model(id, restored).map_err(|e| e.to_string())?;
            }
        }
        client.engine = Some(engine);
        Ok(())
    }

    /// The engines' clock: the step counter, as milliseconds.
    fn time(&self) -> u64 {
        self.now as u64
    }

    fn note(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(line());
        }
    }

    fn deliver_to_client(&mut self, i: usize) -> Result<(), String> {
        let now = Time::from_millis(self.time());
        if let Some(message) = self.clients[i].to_client.front() {
            let line = format!("  -> client {i}: {message:?}");
            self.note(|| line);
        }
        let client = &mut self.clients[i];
        let Some(engine) = &mut client.engine else {
            return Ok(());
        };
        let Some(message) = client.to_client.pop_front() else {
            return Ok(());
        };
        engine.handle_message(now, message);
        self.drain(i)
    }

    fn deliver_to_server(&mut self, i: usize) -> Result<(), String> {
        if let Some(message) = self.clients[i].to_server.front() {
            let line = format!("  <- client {i}: {message:?}");
            self.note(|| line);
        }
        let Some((connection, message)) = self.clients[i].to_server.pop_front() else {
            return Ok(());
        };
        let replica = self.clients[i].replica;
        let current = self.server.connections[i].as_ref().map(|(c, _)| *c);
        match message {
            ClientMessage::Request {
                id,
                request: ClientRequest::Resync { model, known_version, in_flight },
            } => {
                if current != Some(connection) {
                    return Ok(()); // a dead connection's resync: nobody listens for the answer
                }
                let Some(sequencer) = self.server.models.get(&model) else {
                    let error = ErrorReply::new(ErrorCode::MODEL_NOT_FOUND, "no such model");
                    self.clients[i]
                        .to_client
                        .push_back(ServerMessage::Error { to: Some(id), error });
                    return Ok(());
                };
                let in_flight_committed = in_flight.and_then(|f| sequencer.commit_of(f));
                let operations = sequencer
                    .operations_since(known_version)
                    .map_err(|e| format!("resync: {e}"))?
                    .to_vec();
                let response = ServerResponse::ResyncStarted {
                    model: model.clone(),
                    current_version: sequencer.version(),
                    in_flight_committed,
                    permissions: Permissions::ALL,
                };
                let client = &mut self.clients[i];
                client.to_client.push_back(ServerMessage::Response { to: id, response });
                let pages: Vec<_> = operations.chunks(5).map(<[_]>::to_vec).collect();
                let count = pages.len().max(1);
                for n in 0..count {
                    let operations = pages.get(n).cloned().unwrap_or_default();
                    let push = ServerPush::ResyncPage {
                        model: model.clone(),
                        operations,
                        last: n + 1 == count,
                    };
                    client.to_client.push_back(ServerMessage::Push(push));
                }
                if let Some((_, open)) = &mut self.server.connections[i] {
                    open.insert(model);
                }
            }
            ClientMessage::Request { id, request: ClientRequest::ResyncComplete { model, .. } } => {
                if current == Some(connection) {
                    let response = ServerResponse::ResyncCompleted {
                        model,
                        collaborators: Vec::new(),
                        references: Vec::new(),
                    };
                    self.clients[i]
                        .to_client
                        .push_back(ServerMessage::Response { to: id, response });
                }
            }
            ClientMessage::Request {
                id,
                request: ClientRequest::CreateModel { model, collection, data, nonce, .. },
            } => {
                let response = match self.server.models.get(&model) {
                    Some(existing) if self.server.nonces.get(&model) == Some(&nonce) => {
                        let version = existing.version();
                        let response = ServerResponse::ModelCreated {
                            model,
                            version,
                            created_at: Timestamp(0),
                        };
                        ServerMessage::Response { to: id, response }
                    }
                    _ if self.server.deleted.contains(&model) => ServerMessage::Error {
                        to: Some(id),
                        error: ErrorReply::new(ErrorCode::MODEL_ALREADY_EXISTS, "id was deleted"),
                    },
                    Some(_) => ServerMessage::Error {
                        to: Some(id),
                        error: ErrorReply::new(ErrorCode::MODEL_ALREADY_EXISTS, "id taken"),
                    },
                    None => {
                        let snapshot = ModelSnapshot {
                            collection,
                            version: 0,
                            created_at: Timestamp(self.now),
                            modified_at: Timestamp(self.now),
                            data,
                        };
                        let sequencer =
                            Sequencer::new(model.clone(), snapshot, BTreeMap::new(), 100_000);
                        self.server.models.insert(model.clone(), sequencer);
                        self.server.nonces.insert(model.clone(), nonce);
                        self.server.committed.retain(|(m, _, _)| *m != model);
                        let response = ServerResponse::ModelCreated {
                            model,
                            version: 0,
                            created_at: Timestamp(self.now),
                        };
                        ServerMessage::Response { to: id, response }
                    }
                };
                if current == Some(connection) {
                    self.clients[i].to_client.push_back(response);
                }
            }
            ClientMessage::Request {
                id,
                request: ClientRequest::SubscribeOffline { subscribe, unsubscribe, replace },
            } => {
                if current != Some(connection) {
                    return Ok(());
                }
                let client = &mut self.clients[i];
                if replace {
                    self.server.subscribed[i].clear();
                }
                for model in unsubscribe {
                    self.server.subscribed[i].remove(&model);
                }
                let done = ServerResponse::Done;
                client.to_client.push_back(ServerMessage::Response { to: id, response: done });
                for known in subscribe {
                    let update = match self.server.models.get(&known.model) {
                        None => OfflineUpdate::Deleted,
                        Some(sequencer) => match known.version {
                            Some(version) if version >= sequencer.version() => continue,
                            Some(version) if sequencer.version() - version <= 5 => {
                                let operations = sequencer
                                    .operations_since(version)
                                    .map_err(|e| format!("catch-up: {e}"))?
                                    .to_vec();
                                OfflineUpdate::Operations { operations, more: false }
                            }
                            _ => OfflineUpdate::Snapshot {
                                snapshot: sequencer.snapshot(),
                                permissions: Permissions::ALL,
                            },
                        },
                    };
                    if update != OfflineUpdate::Deleted {
                        self.server.subscribed[i].insert(known.model.clone());
                    }
                    let push = ServerPush::OfflineUpdate { model: known.model, update };
                    client.to_client.push_back(ServerMessage::Push(push));
                }
            }
            ClientMessage::Request { id, request: ClientRequest::DeleteModel { model } } => {
                let response = if self.server.models.remove(&model).is_some() {
                    self.server.deleted.insert(model.clone());
                    self.stats.models_deleted += 1;
                    for (j, subscribed) in self.server.subscribed.iter_mut().enumerate() {
                        if subscribed.remove(&model) {
                            let update = OfflineUpdate::Deleted;
                            let push = ServerPush::OfflineUpdate { model: model.clone(), update };
                            self.clients[j].to_client.push_back(ServerMessage::Push(push));
                        }
                    }
                    for (j, connection) in self.server.connections.iter_mut().enumerate() {
                        if let Some((_, open)) = connection
                            && open.remove(&model)
                        {
                            let push = ServerPush::ModelForceClosed {
                                model: model.clone(),
                                code: ErrorCode::MODEL_NOT_FOUND,
                                message: "deleted".into(),
                            };
                            self.clients[j].to_client.push_back(ServerMessage::Push(push));
                        }
                    }
                    ServerMessage::Response { to: id, response: ServerResponse::Done }
                } else {
                    let error = ErrorReply::new(ErrorCode::MODEL_NOT_FOUND, "no such model");
                    ServerMessage::Error { to: Some(id), error }
                };
                if current == Some(connection) {
                    self.clients[i].to_client.push_back(response);
                }
            }
            ClientMessage::Request { id, request: ClientRequest::CloseModel { model } } => {
                if current == Some(connection) {
                    if let Some((_, open)) = &mut self.server.connections[i] {
                        open.remove(&model);
                    }
                    let response =
                        ServerMessage::Response { to: id, response: ServerResponse::Done };
                    self.clients[i].to_client.push_back(response);
                }
            }
            ClientMessage::Notice(ClientNotice::Submit {
                model,
                replica: sent_by,
                seq,
                base_version,
                operation,
            }) => {
                if sent_by != replica {
                    return Err(format!("client {i} submitted as replica {sent_by:?}"));
                }
                let Some(sequencer) = self.server.models.get_mut(&model) else {
                    if current.is_some() {
                        let error = ErrorReply::new(ErrorCode::MODEL_NOT_FOUND, "no such model");
                        let push = ServerPush::SubmitRejected { model, seq, error };
                        self.clients[i].to_client.push_back(ServerMessage::Push(push));
                    }
                    return Ok(());
                };
                let submission = Submission {
                    author: SessionId(format!("{i}")),
                    replica,
                    seq,
                    base_version,
                    operation,
                };
                let outcome = sequencer.submit(submission, Timestamp(self.now)).map_err(|e| {
                    format!("the server refused replica {replica:?}'s submission to {model}: {e}")
                })?;
                match outcome {
                    SubmitOutcome::Committed(record) => {
                        if !self.server.committed.insert((model.clone(), replica, seq)) {
                            return Err(format!("({model}, {replica:?}, {seq}) committed twice"));
                        }
                        self.stats.commits += 1;
                        let version = record.operation.version;
                        for (j, other) in self.clients.iter_mut().enumerate() {
                            let open = self.server.connections[j]
                                .as_ref()
                                .is_some_and(|(_, open)| open.contains(&model));
                            if !open {
                                // Subscribers that do not have it open hear of it offline.
                                let connected = self.server.connections[j].is_some();
                                if connected && self.server.subscribed[j].contains(&model) {
                                    let update = OfflineUpdate::Operations {
                                        operations: vec![record.operation.clone()],
                                        more: false,
                                    };
                                    let push =
                                        ServerPush::OfflineUpdate { model: model.clone(), update };
                                    other.to_client.push_back(ServerMessage::Push(push));
                                }
                                continue;
                            }
                            let push = if j == i {
                                ServerPush::Ack {
                                    model: model.clone(),
                                    seq,
                                    version,
                                    timestamp: record.operation.timestamp,
                                }
                            } else {
                                ServerPush::RemoteOperation {
                                    model: model.clone(),
                                    operation: record.operation.clone(),
                                }
                            };
                            other.to_client.push_back(ServerMessage::Push(push));
                        }
                    }
                    SubmitOutcome::Duplicate(Commit { version, timestamp }) => {
                        self.stats.duplicates_answered += 1;
                        let open = self.server.connections[i]
                            .as_ref()
                            .is_some_and(|(_, open)| open.contains(&model));
                        if open {
                            let push = ServerPush::Ack { model, seq, version, timestamp };
                            self.clients[i].to_client.push_back(ServerMessage::Push(push));
                        }
                    }
                }
            }
            other => return Err(format!("unexpected message {other:?}")),
        }
        Ok(())
    }
}

fn engine_config(config: Config) -> EngineConfig {
    EngineConfig {
        max_batch_parts: config.max_batch,
        compact_every: config.compact_every,
        sync_concurrency: 2,
        ..EngineConfig::default()
    }
}

impl Client {
    /// Rebuilds a model from the store.
    fn restore(&self, model: &ModelId) -> Result<Restored, String> {
        let state = block_on(self.store.load_model(model))
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("replica {:?}: {model} is not in the store", self.replica))?;
        store::restore(state)
            .map_err(|e| format!("replica {:?}: restoring {model} failed: {e}", self.replica))
    }
}
