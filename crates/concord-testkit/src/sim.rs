//! A seeded simulation: one server — the real session and model hosts of
//! `concord_sync::host`, with an in-memory store as its disk — and N clients (each a
//! [`ClientEngine`] with a store that survives crashes) editing several models over an
//! in-memory network that carries the real protocol messages.
//!
//! Each step the seed picks one event: a local edit, a client storage batch becoming
//! durable, a server job becoming durable (only then are its messages sent), a message
//! delivered (what the server sends travels encoded, large messages in fragment frames that
//! the client puts back together), a disconnect (the last client messages may still arrive late, or twice, or be
//! lost), a reconnect with resync, a client crash (everything not yet durable is lost) or
//! restart from its store, a server crash (its queued jobs and memory are lost; it restarts
//! from its store), idle models unloading. Then every client reconnects and the network
//! drains, and [`run`] checks that every replica equals the server, that its store rebuilds
//! the same model, that the server's store rebuilds the server's model, that no submission
//! was committed twice, that every ack named a durable commit, and that every change a
//! store reported durable reached the server.

pub(crate) mod server;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use concord_ot::{ElementId, IndexRange, Kind, ReferenceValue, ReplicaId};
use concord_protocol::{
    Auth, ClientMessage, ClientNotice, CollectionId, CreationNonce, ErrorCode, Limits, ModelId,
    ModelSnapshot, PermissionGrants, Reassembler, ReconnectToken, ReferenceKey, ServerMessage,
    Session, Timestamp, User, UserId, encode_frames,
};
use concord_storage::memory::MemoryStore;
use concord_storage::{Batch, MemoryAdapter, ModelRecord, Mutation, OfflineStore, StoreKey};
use concord_sync::host::{ConnId, HostConfig, SessionLimits, Write};
use concord_sync::{
    Action, ClientEngine, DisconnectReason, DomainEvent, EngineConfig, EngineError, Event,
    ModelReplica, StorageBatch, StoreChange, Time, store, store::Restored,
};

use self::server::{SIMULATED_FAULT, Sent, SimServer};
use crate::server_store::MemoryServerStore;
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
    /// The server's limit on models open on one connection (`None`: its default, far
    /// above what a scenario opens). Clients with an even index are told it, as a server's
    /// session would; the others learn it from the server's refusals.
    pub max_open_models: Option<usize>,
    /// The percentage of steps on which the client also shares, moves, clears or unshares
    /// a reference (drawn apart from the other events: with 0, a seed plays as it did
    /// before references existed).
    pub reference_percent: usize,
    /// The percentage of steps on which the server's store fails its next one to four
    /// reads: as unreachable (`unavailable`), or one time in two as a store fault
    /// (`internal`: the clients report a `ServerFault`, and the model waits offline until
    /// the engine tries it again). Drawn apart too: with 0, a seed plays as it did before.
    pub outage_percent: usize,
}

impl Config {
    /// Eight clients on three models, long runs, large batches, frequent compaction.
    pub fn many_clients() -> Config {
        Config {
            clients: 8,
            models: 3,
            steps: 800,
            max_batch: 20,
            compact_every: 5,
            max_open_models: None,
            reference_percent: 10,
            outage_percent: 0,
        }
    }

    /// More models than the server lets one connection open: the applications hold some
    /// open (often more than the limit), the rest sync in the background, around them.
    pub fn open_limit() -> Config {
        Config {
            clients: 3,
            models: 10,
            steps: 600,
            max_batch: 3,
            compact_every: 20,
            max_open_models: Some(4),
            reference_percent: 10,
            outage_percent: 0,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            clients: 3,
            models: 2,
            steps: 400,
            max_batch: 3,
            compact_every: 20,
            max_open_models: None,
            reference_percent: 10,
            outage_percent: 0,
        }
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
    /// Deletions that named another creation than the model's at the server (a client
    /// deleting its own refused or unconfirmed creation): that model must survive them.
    pub deletions_of_other_creations: usize,
    pub subscriptions: usize,
    pub downloads: usize,
    pub creations_refused: usize,
    pub server_crashes: usize,
    pub unloads: usize,
    /// Connections the engines dropped because a request or the server went silent.
    pub timeouts: usize,
    /// Connection attempts the engines made after losing a connection, and those that
    /// failed.
    pub reconnects: usize,
    pub failed_connects: usize,
    /// Server messages that travelled as several fragment frames.
    pub fragmented_messages: usize,
    /// Requests the server refused because the connection had as many models open as it
    /// allows (only engines not told the limit may meet one).
    pub overloaded: usize,
    /// References shared, set, cleared or unshared by the clients.
    pub reference_changes: usize,
    /// References found, at the end, exactly as their owners hold them on another client.
    pub references_compared: usize,
    /// Store reads the server failed as unreachable (answered `unavailable`), and as store
    /// faults (`internal`), and the `ServerFault`s the clients reported for the latter.
    pub unavailable_reads: usize,
    pub internal_reads: usize,
    pub server_faults: usize,
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
        self.deletions_of_other_creations += other.deletions_of_other_creations;
        self.subscriptions += other.subscriptions;
        self.downloads += other.downloads;
        self.creations_refused += other.creations_refused;
        self.server_crashes += other.server_crashes;
        self.unloads += other.unloads;
        self.timeouts += other.timeouts;
        self.reconnects += other.reconnects;
        self.failed_connects += other.failed_connects;
        self.fragmented_messages += other.fragmented_messages;
        self.overloaded += other.overloaded;
        self.reference_changes += other.reference_changes;
        self.references_compared += other.references_compared;
        self.unavailable_reads += other.unavailable_reads;
        self.internal_reads += other.internal_reads;
        self.server_faults += other.server_faults;
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
    /// The connection the client uses, if any.
    connection: Option<ConnId>,
    /// What is on its way to the server, per connection: in order on one connection, in
    /// any order across them (a closed connection's last messages may arrive after the new
    /// connection's first ones, and before the server notices the close).
    to_server: BTreeMap<ConnId, VecDeque<Wire>>,
    /// The frames on their way to the client: a message larger than
    /// [`SIM_FRAGMENT_BYTES`] as several fragments.
    to_client: VecDeque<Vec<u8>>,
    /// Puts the client's fragmented messages back together; a new one per connection.
    frames: Reassembler<ServerMessage>,
    /// Per model, the highest local seq a store batch made durable.
    max_durable_seq: BTreeMap<ModelId, u64>,
    /// Models this client created whose id another creation had taken.
    refused: BTreeSet<ModelId>,
    created: usize,
    /// Whether this engine was connected since it started (its later attempts may fail;
    /// the application's first one is not retried by the engine, so it succeeds here).
    connected_once: bool,
    /// The last `SyncProgress` of the current connection: done, failed, total.
    progress: Option<(usize, usize, usize)>,
}

/// What travels from a client to the server.
#[derive(Debug, Clone)]
enum Wire {
    Message(ClientMessage),
    /// The connection closed: the server notices once it has read what came before.
    Closed,
}

/// The seeds a sweep plays: `CONCORD_SEEDS` of them (`default` unless set), from
/// `CONCORD_FIRST_SEED` (0 unless set); `cargo xtask soak` sets both.
pub fn seeds(default: u64) -> std::ops::Range<u64> {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let first = var("CONCORD_FIRST_SEED").unwrap_or(0);
    first..first + var("CONCORD_SEEDS").unwrap_or(default)
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
    /// Draws the reference actions, apart from `rng`, so that adding them left the other
    /// events each seed plays as they were.
    references: SimRng,
    /// Draws the store's outages, apart from `rng` for the same reason.
    outages: SimRng,
    config: Config,
    server: SimServer,
    /// Which client each connection belongs to.
    owners: BTreeMap<ConnId, usize>,

    clients: Vec<Client>,
    stats: Stats,
    now: i64,
    trace: Option<Vec<String>>,
}

impl Sim {
    fn new(seed: u64, config: Config) -> Result<Sim, String> {
        let mut rng = SimRng::new(seed);
        let mut durable = MemoryServerStore::new();
        let mut initial = BTreeMap::new();
        for m in 0..config.models.max(1) {
            let id = ModelId::new(format!("model-{m}")).map_err(|e| e.to_string())?;
            let collection = CollectionId::new("sim").map_err(|e| e.to_string())?;
            let snapshot = ModelSnapshot {
                collection: collection.clone(),
                version: 0,
                created_at: Timestamp(0),
                modified_at: Timestamp(0),
                data: gen_document(&mut rng),
            };
            let record = concord_sync::host::ModelRecord {
                collection,
                created_at: Timestamp(0),
                nonce: None,
                creator: None,
                grants: PermissionGrants::default(),
            };
            durable.apply(&Write::CreateModel {
                model: id.clone(),
                record,
                snapshot: snapshot.clone(),
            });
            initial.insert(id, snapshot);
        }
        let adapter = MemoryAdapter::new();
        let clients = (0..config.clients)
            .map(|i| {
                let replica = ReplicaId(i as u64 + 1);
                let mut engine = ClientEngine::new(replica, engine_config(config, i));
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
                    to_server: BTreeMap::new(),
                    to_client: VecDeque::new(),
                    frames: Reassembler::new(Limits::DEFAULT),
                    max_durable_seq: BTreeMap::new(),
                    refused: BTreeSet::new(),
                    created: 0,
                    connected_once: false,
                    progress: None,
                })
            })
            .collect::<Result<Vec<Client>, String>>()?;
        // Small pages, a short memory and frequent snapshots, so that paging, reading
        // history back from the store and restoring from snapshots all happen.
        let host = HostConfig {
            history_in_memory: 8,
            snapshot_every: 7,
            page: 5,
            ..HostConfig::default()
        };
        let mut limits = SessionLimits::default();
        if let Some(max) = config.max_open_models {
            limits.max_open_models = max;
        }
        let server = SimServer::new(host, limits, durable);
        Ok(Sim {
            rng,
            references: SimRng::new(seed ^ 0x005e_ed0f_2ef5),
            outages: SimRng::new(seed ^ 0x0007_a6e5_0b5e),
            config,
            server,
            owners: BTreeMap::new(),

            clients,
            stats: Stats::default(),
            now: 0,
            trace: None,
        })
    }

    fn play(&mut self) -> Result<(), String> {
        for i in 0..self.clients.len() {
            self.go_online(i)?;
        }
        for _ in 0..self.config.steps {
            self.now += 1;
            self.timers()?;
            let i = self.rng.below(self.clients.len());
            let roll = self.rng.below(100);
            let now = self.now;
            self.note(|| format!("step {now}: client {i} roll {roll}"));
            if self.references.below(100) < self.config.reference_percent {
                self.reference(i)?;
            }
            if self.outages.below(100) < self.config.outage_percent {
                let reads = 1 + self.outages.below(4);
                let damaged = self.outages.below(2) == 0;
                self.note(|| format!("  the server's store fails {reads} reads ({damaged})"));
                self.server.failing_reads = reads;
                self.server.damaged = damaged;
            }
            match roll {
                0..=22 => self.local_edit(i)?,
                23..=35 => self.flush_one(i)?,
                36..=49 => self.deliver_to_server(i)?,
                50..=62 => self.server_flush()?,
                63..=74 => self.deliver_to_client(i)?,
                // The network drops the connection; the engine reconnects by itself, after its
                // backoff.
                75..=79 => self.disconnect(i)?,
                // Nothing happens for a while (timers fire: heartbeats, timeouts, retries).
                80..=84 => self.now += i64::try_from(self.rng.below(80)).unwrap_or(0),
                85..=89 => self.close_or_open(i)?,
                90..=91 => self.create(i)?,
                92 => self.delete(i)?,
                93..=94 => self.subscribe(i)?,
                95 => self.unload_idle()?,
                96 if self.rng.below(3) == 0 => self.crash_server()?,
                _ => self.crash_or_restart(i)?,
            }
        }
        self.settle()?;
        self.stats.commits = self.server.commits;
        self.stats.models_deleted = self.server.deletions;
        self.stats.deletions_of_other_creations = self.server.deletions_of_other_creations;
        self.stats.server_crashes = self.server.crashes;
        self.stats.unloads = self.server.unloads;
        self.stats.unavailable_reads = self.server.unavailable_reads;
        self.stats.internal_reads = self.server.internal_reads;
        self.check()
    }

    /// Restarts everyone (the engines reconnect by themselves), then runs until nothing
    /// moves; then opens every model everywhere and runs again.
    fn settle(&mut self) -> Result<(), String> {
        // The store works again.
        self.server.failing_reads = 0;
        for i in 0..self.clients.len() {
            if self.clients[i].engine.is_none() {
                self.restart(i)?;
            }
        }
        // A model the server failed for a client is tried again after its backoff, on the
        // same connection: the engines are not idle until then.
        self.run_until_quiet()?;
        // Background sync alone (and the application's open models) must have pushed every
        // stored change by now, before anything is opened to compare.
        self.check_pushed()?;
        let Some(limit) = self.config.max_open_models else {
            for i in 0..self.clients.len() {
                let models = self.clients[i].model_ids.clone();
                for model in models {
                    self.open(i, &model)?;
                }
            }
            self.run_until_quiet()?;
            for i in 0..self.clients.len() {
                self.stats.references_compared += self.check_models(i, None)?;
            }
            return Ok(());
        };
        // More models than one connection may open: each client compares them a few at a
        // time, with nothing else open.
        for i in 0..self.clients.len() {
            let loaded: Vec<ModelId> = self.engine(i).models().cloned().collect();
            for model in &loaded {
                self.clients[i].engine.as_mut().expect("restarted").remove_model(model);
            }
            self.drain(i)?;
            self.run_until_quiet()?;
            let models = self.clients[i].model_ids.clone();
            for chunk in models.chunks(limit) {
                for model in chunk {
                    self.open(i, model)?;
                }
                self.run_until_quiet()?;
                self.stats.references_compared += self.check_models(i, Some(chunk))?;
                for model in chunk {
                    self.clients[i].engine.as_mut().expect("restarted").remove_model(model);
                }
                self.drain(i)?;
                self.run_until_quiet()?;
            }
        }
        Ok(())
    }

    fn engine(&self, i: usize) -> &ClientEngine {
        self.clients[i].engine.as_ref().expect("restarted")
    }

    /// Once every engine is connected and quiet: every change a store holds reached the
    /// server — nothing pending, no creation unconfirmed — unless the server cannot take it
    /// (the model was deleted there, or its id belongs to another creation); and each
    /// engine's last progress report counts every model it synced in the background as
    /// done or failed.
    fn check_pushed(&self) -> Result<(), String> {
        for client in &self.clients {
            let summaries = block_on(client.store.models()).map_err(|e| e.to_string())?;
            for m in summaries.iter().filter(|m| !m.record.deleted_locally) {
                let id = &m.record.id;
                let owed = m.pending_count > 0 || m.record.created_locally;
                let impossible =
                    client.refused.contains(id) || self.server.durable().is_deleted(id);
                if owed && !impossible {
                    return Err(format!(
                        "replica {:?}: {id} still holds {} pending changes (created here: {}) \
                         that never reached the server",
                        client.replica, m.pending_count, m.record.created_locally
                    ));
                }
            }
            if let Some((done, failed, total)) = client.progress
                && done + failed != total
            {
                return Err(format!(
                    "replica {:?}: background sync ended at {done} done and {failed} failed of {total}",
                    client.replica
                ));
            }
        }
        Ok(())
    }

    fn run_until_quiet(&mut self) -> Result<(), String> {
        for _ in 0..100_000 {
            self.now += 1;
            self.timers()?;
            // An engine still waiting to reconnect, or to retry background sync, has
            // something left to do.
            let mut moved = self.clients.iter().any(|c| {
                c.connection.is_none() || c.engine.as_ref().is_some_and(|e| !e.sync_idle())
            });
            while self.server.has_pending() {
                self.server_flush()?;
                moved = true;
            }
            for i in 0..self.clients.len() {
                while !self.clients[i].queue.is_empty() {
                    self.flush_one(i)?;
                    moved = true;
                }
                while self.clients[i].to_server.values().any(|q| !q.is_empty()) {
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
                if self.server.durable().exists(model) && !stored {
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
        }
        Ok(())
    }

    /// Client `i`'s models (`None`: all of them), loaded: each equals the server's, live
    /// and settled, its store rebuilds it, and every durable change of it reached the
    /// server.
    /// Returns how many other clients' references it found as their owners hold them.
    fn check_models(&self, i: usize, models: Option<&[ModelId]>) -> Result<usize, String> {
        let client = &self.clients[i];
        let engine = self.engine(i);
        {
            for id in models.unwrap_or(&client.model_ids) {
                let replica = engine.model(id).ok_or_else(|| format!("{id} not loaded"))?;
                let who = format!("replica {:?}, {id}", client.replica);
                if client.refused.contains(id) {
                    // Another creation owns the id: the local data must still be there.
                    if engine.is_settled(id) {
                        return Err(format!("{who}: a refused creation went live"));
                    }
                    continue;
                }
                let Some((version, document)) = self.server.state(id)? else {
                    // Deleted by another client: the local copy stays, offline.
                    if !self.server.durable().is_deleted(id) {
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
                if replica.confirmed_version() != version {
                    return Err(format!(
                        "{who}: at version {}, the server at {version}",
                        replica.confirmed_version(),
                    ));
                }
                if *replica.local() != document {
                    return Err(format!(
                        "{who} diverged:\n  replica {}\n  server  {}",
                        replica.local().to_json(),
                        document.to_json()
                    ));
                }
                let stored = client.restore(id)?;
                if *stored.replica.local() != document {
                    return Err(format!("{who}: the store rebuilds a different model"));
                }
                let committed_through =
                    self.server.durable().last_seq(id, client.replica).unwrap_or(0);
                let durable = client.max_durable_seq.get(id).copied().unwrap_or(0);
                if committed_through < durable {
                    return Err(format!(
                        "{who}: durable change {durable} never reached the server (committed through {committed_through})"
                    ));
                }
            }
        }
        let mut compared = 0;
        for id in models.unwrap_or(&client.model_ids) {
            compared += self.check_references(i, id)?;
        }
        Ok(compared)
    }

    /// On a model client `i` has open (and shares references on), every other client's
    /// references are seen exactly as their owners hold them, and no others; returns how
    /// many it compared.
    fn check_references(&self, i: usize, id: &ModelId) -> Result<usize, String> {
        let engine = self.engine(i);
        if !engine.is_settled(id) || !engine.shares_references(id) {
            return Ok(0);
        }
        let who = format!("replica {:?}, {id}", self.clients[i].replica);
        let mut owners = BTreeMap::new();
        for (j, client) in self.clients.iter().enumerate() {
            let Some(other) = client.engine.as_ref().filter(|_| j != i) else { continue };
            if !other.is_settled(id) || !other.shares_references(id) {
                continue;
            }
            let Some(session) = other.session_id() else { continue };
            owners.insert(session.clone(), other.own_references(id));
        }
        let mut compared = 0;
        for (session, own) in &owners {
            for (key, value) in own {
                let seen = engine.reference(id, session, key);
                if seen.as_ref() != Some(value) {
                    return Err(format!(
                        "{who}: sees {session:?}'s reference {key:?} as {seen:?}, its owner holds {value:?}"
                    ));
                }
                compared += 1;
            }
        }
        for shared in engine.remote_references(id) {
            let owned = owners.get(&shared.session).is_some_and(|own| {
                own.iter().any(|(key, value)| *key == shared.reference && *value == shared.value)
            });
            if !owned {
                return Err(format!("{who}: sees a reference its owner does not hold: {shared:?}"));
            }
        }
        Ok(compared)
    }

    /// Shares, moves, clears or unshares one of client `i`'s references on a loaded model:
    /// cursors and selections on strings, properties on objects, elements on the model.
    fn reference(&mut self, i: usize) -> Result<(), String> {
        let Some(engine) = &mut self.clients[i].engine else { return Ok(()) };
        let models: Vec<ModelId> = engine.models().cloned().collect();
        if models.is_empty() {
            return Ok(());
        }
        let model = models[self.references.below(models.len())].clone();
        let doc = engine.model(&model).expect("loaded").local().clone();
        let rng = &mut self.references;
        if rng.below(8) == 0 {
            let own = engine.own_references(&model);
            if let Some((key, _)) = own.get(rng.below(own.len().max(1))) {
                engine.unshare_reference(&model, key);
            }
        } else {
            let ids: Vec<ElementId> = doc.ids().collect();
            let id = ids[rng.below(ids.len())];
            let on = |key: &str| ReferenceKey { element: Some(id), key: key.into() };
            let (key, value) = match doc.kind(id) {
                Some(Kind::String) => {
                    let len = doc.text_len(id).unwrap_or(0) + 1;
                    if rng.flip() {
                        (on("cursor"), ReferenceValue::Index(vec![rng.below(len)]))
                    } else {
                        let range = IndexRange { start: rng.below(len), end: rng.below(len) };
                        (on("selection"), ReferenceValue::Range(vec![range]))
                    }
                }
                Some(Kind::Object) => {
                    let keys: Vec<String> = doc
                        .object_entries(id)
                        .map(|e| e.keys().cloned().collect())
                        .unwrap_or_default();
                    let picked = keys.into_iter().filter(|_| rng.flip()).collect();
                    (on("property"), ReferenceValue::Property(picked))
                }
                _ => {
                    let key = ReferenceKey { element: None, key: "element".into() };
                    (key, ReferenceValue::Element(vec![id]))
                }
            };
            let value = (rng.below(10) != 0).then_some(value);
            engine
                .set_reference(&model, key, value)
                .map_err(|e| format!("a valid reference was refused: {e}"))?;
        }
        self.stats.reference_changes += 1;
        self.drain(i)
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
            .durable()
            .models()
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

    /// Deletes one of the client's models (offline or not). A refused creation is not the
    /// server's model of that id: its deletion names the creation, and must leave the
    /// other creator's model be (the server checks every deletion it makes durable).
    fn delete(&mut self, i: usize) -> Result<(), String> {
        let client = &mut self.clients[i];
        let Some(engine) = &mut client.engine else { return Ok(()) };
        if client.model_ids.is_empty() {
            return Ok(());
        }
        let model = client.model_ids.remove(self.rng.below(client.model_ids.len()));
        client.refused.remove(&model);
        let collection = CollectionId::new("sim").map_err(|e| e.to_string())?;
        if let Some(trace) = &mut self.trace {
            trace.push(format!("  client {i} deletes {model}"));
        }
        // A creation the store holds unconfirmed: the deletion names it.
        let stored = block_on(client.store.load_model_head(&model)).map_err(|e| e.to_string())?;
        let creation = stored.and_then(|state| state.creation).map(|c| c.nonce);
        engine.delete_model(model, collection, creation);
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
        let mut actions = Vec::new();
        while let Some(action) = engine.poll_action() {
            actions.push(action);
        }
        while let Some(message) = engine.poll_transmit(Time::from_millis(now)) {
            if let Some(connection) = client.connection {
                client.to_server.entry(connection).or_default().push_back(Wire::Message(message));
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
                // Only for a read the server failed as a store fault.
                DomainEvent::ServerFault { error, .. }
                    if error.code == ErrorCode::INTERNAL
                        && error.message.ends_with(SIMULATED_FAULT) =>
                {
                    self.stats.server_faults += 1;
                }
                DomainEvent::ServerFault { model, error } => {
                    return Err(format!(
                        "replica {:?}: {model}: server fault: {error}",
                        client.replica
                    ));
                }
                DomainEvent::SyncProgress { done, failed, total } => {
                    if done + failed > total {
                        return Err(format!(
                            "replica {:?}: progress {done} done, {failed} failed of {total}",
                            client.replica
                        ));
                    }
                    client.progress = Some((done, failed, total));
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
        for action in actions {
            self.act(i, action)?;
        }
        Ok(())
    }

    /// Carries out what the engine asked of the connection.
    fn act(&mut self, i: usize, action: Action) -> Result<(), String> {
        let line = format!("  client {i} action: {action:?}");
        self.note(|| line);
        match action {
            Action::Connect { .. } => {
                // An attempt after a lost connection may fail (the server is restarting,
                // the network is down); the engine tries again after its backoff.
                if self.clients[i].connected_once {
                    self.stats.reconnects += 1;
                    if self.rng.below(5) == 0 {
                        self.stats.failed_connects += 1;
                        let now = Time::from_millis(self.time());
                        if let Some(engine) = &mut self.clients[i].engine {
                            engine.handle_connect_failed(now, None);
                        }
                        return self.drain_outputs(i);
                    }
                }
                self.connect(i)
            }
            Action::Disconnect { reason } => {
                if reason != DisconnectReason::Requested {
                    self.stats.timeouts += 1;
                }
                self.cut(i)
            }
        }
    }

    /// Fires the engines' timers that are due: heartbeats, request timeouts, reconnects.
    fn timers(&mut self) -> Result<(), String> {
        let now = Time::from_millis(self.time());
        for i in 0..self.clients.len() {
            let Some(engine) = &mut self.clients[i].engine else { continue };
            if engine.poll_timeout().is_some_and(|due| due <= now) {
                engine.handle_timeout(now);
                self.drain(i)?;
            }
        }
        Ok(())
    }

    /// The application of client `i` wants to be online.
    fn go_online(&mut self, i: usize) -> Result<(), String> {
        let Some(engine) = &mut self.clients[i].engine else { return Ok(()) };
        engine.connect(Auth::Anonymous { display_name: None });
        self.drain(i)
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
        let user = User { id: UserId(format!("user-{i}")), display_name: None, anonymous: false };
        let accepted = self.server.connect(user);
        let conn = accepted.conn;
        self.owners.insert(conn, i);
        client.connection = Some(conn);
        client.connected_once = true;
        client.progress = None;
        client.to_client.clear();
        client.frames = Reassembler::new(Limits::DEFAULT);
        self.stats.resyncs += 1;
        let unsynced = block_on(client.store.unsynced()).map_err(|e| e.to_string())?;
        let mut with_changes = unsynced.changed;
        with_changes.retain(|model| engine.model(model).is_none());
        let mut session = Session {
            session: accepted.session,
            user: accepted.user,
            reconnect_token: ReconnectToken(format!("{i}")),
            server_version: "sim".into(),
            limits: self.server.limits(),
        };
        if i % 2 == 1 {
            // Odd engines are told no open-model limit (as by a server that enforces a lower
            // one than it tells): they meet its refusals, and must retry them.
            session.limits.max_open_models = u64::MAX;
        }
        engine.handle_connected(now, &session, with_changes, unsynced.deleted);
        self.drain(i)
    }

    /// The network drops client `i`'s connection; its engine hears of it.
    fn disconnect(&mut self, i: usize) -> Result<(), String> {
        let now = Time::from_millis(self.time());
        if self.clients[i].connection.is_none() {
            return Ok(());
        }
        if let Some(engine) = &mut self.clients[i].engine {
            engine.handle_disconnected(now);
        }
        self.cut(i)
    }

    /// Client `i`'s connection is gone.
    fn cut(&mut self, i: usize) -> Result<(), String> {
        self.stats.disconnects += 1;
        let client = &mut self.clients[i];
        let Some(conn) = client.connection.take() else { return Ok(()) };
        client.to_client.clear();
        client.frames = Reassembler::new(Limits::DEFAULT);
        // What was on its way to the server may still arrive, late, or twice, or be lost;
        // then the server notices the close.
        let mut late = VecDeque::new();
        for message in client.to_server.remove(&conn).unwrap_or_default() {
            match self.rng.below(4) {
                0 => {}
                1 => {
                    late.push_back(message.clone());
                    late.push_back(message);
                }
                _ => late.push_back(message),
            }
        }
        late.push_back(Wire::Closed);
        client.to_server.insert(conn, late);
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
        let mut engine = ClientEngine::new(client.replica, engine_config(self.config, i));
        // A creation lost with the crash (never durable, so never sent) is gone.
        let summaries = block_on(client.store.models()).map_err(|e| e.to_string())?;
        if let Some(trace) = &mut self.trace {
            trace.push(format!("  client {i} restarts with {summaries:?}"));
        }
        let unsynced = block_on(client.store.unsynced()).map_err(|e| e.to_string())?;
        engine.add_tombstones(unsynced.deleted);
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
        client.connected_once = false;
        self.go_online(i)
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
        let client = &mut self.clients[i];
        if client.engine.is_none() {
            return Ok(());
        }
        let Some(frame) = client.to_client.pop_front() else {
            return Ok(());
        };
        let message = client
            .frames
            .push(&frame)
            .map_err(|e| format!("client {i} could not decode a server frame: {e}"))?;
        let Some(message) = message else {
            // A fragment of a message not complete yet.
            return Ok(());
        };
        let line = format!("  -> client {i}: {message:?}");
        self.note(|| line);
        let client = &mut self.clients[i];
        let Some(engine) = &mut client.engine else {
            return Ok(());
        };
        engine.handle_message(now, message);
        self.drain(i)
    }

    fn deliver_to_server(&mut self, i: usize) -> Result<(), String> {
        let busy: Vec<ConnId> = self.clients[i]
            .to_server
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(c, _)| *c)
            .collect();
        if busy.is_empty() {
            return Ok(());
        }
        let conn = busy[self.rng.below(busy.len())];
        let queue = self.clients[i].to_server.get_mut(&conn).expect("listed");
        let wire = queue.pop_front().expect("not empty");
        if queue.is_empty() {
            self.clients[i].to_server.remove(&conn);
        }
        let line = format!("  <- client {i} on {conn}: {wire:?}");
        self.note(|| line);
        let now = Timestamp(self.now);
        let sent = match wire {
            Wire::Message(message) => {
                if let ClientMessage::Notice(ClientNotice::Submit { model, replica, seq, .. }) =
                    &message
                {
                    if *replica != self.clients[i].replica {
                        return Err(format!("client {i} submitted as replica {replica:?}"));
                    }
                    // A resubmission of a committed change: the server must answer it with
                    // the original ack and apply nothing.
                    if self.server.last_seq(model, *replica).is_some_and(|last| last >= *seq) {
                        self.stats.duplicates_answered += 1;
                    }
                }
                self.server.receive(now, conn, message)?
            }
            Wire::Closed => self.server.close(now, conn)?,
        };
        self.route(sent)
    }

    /// A server job becomes durable; its messages go out.
    fn server_flush(&mut self) -> Result<(), String> {
        let sent = self.server.flush_one()?;
        self.route(sent)
    }

    fn unload_idle(&mut self) -> Result<(), String> {
        let sent = self.server.unload_idle()?;
        self.route(sent)
    }

    /// The server process dies and restarts from its store: every client loses its
    /// connection.
    fn crash_server(&mut self) -> Result<(), String> {
        self.note(|| "  the server crashes".into());
        self.server.crash();
        for i in 0..self.clients.len() {
            if self.clients[i].connection.is_some() {
                self.disconnect(i)?;
            }
        }
        Ok(())
    }

    /// Hands what the server sent to the clients whose connections they were for.
    fn route(&mut self, sent: Sent) -> Result<(), String> {
        for (conn, message) in sent {
            let Some(&i) = self.owners.get(&conn) else { continue };
            let client = &mut self.clients[i];
            if client.connection != Some(conn) || !self.server.is_connected(conn) {
                continue;
            }
            if let Some((model, seq)) = SimServer::acked(&message)
                && !self.server.is_committed(model, client.replica, seq)
                && !self.server.durable().is_deleted(model)
            {
                return Err(format!(
                    "replica {:?} was acked seq {seq} of {model}, which the server's store does not hold",
                    client.replica
                ));
            }
            if let ServerMessage::Error { error, .. } = &message
                && error.code == ErrorCode::OVERLOADED
            {
                // An engine that knows the limit never asks for more than it allows.
                if self.config.max_open_models.is_some() && i % 2 == 0 {
                    return Err(format!(
                        "replica {:?} knows the limit, and the server refused: {error}",
                        client.replica
                    ));
                }
                self.stats.overloaded += 1;
            }
            let frames = encode_frames(&Limits::DEFAULT, SIM_FRAGMENT_BYTES, &message)
                .map_err(|e| format!("the server could not encode {message:?}: {e}"))?;
            if frames.len() > 1 {
                self.stats.fragmented_messages += 1;
            }
            client.to_client.extend(frames);
        }
        Ok(())
    }
}

/// The fragment size of the simulated server: small, so that snapshots and pages of
/// operations often travel in fragments (and a fragment boundary falls anywhere).
const SIM_FRAGMENT_BYTES: usize = 128;

/// The engine's settings, with its clock in simulation steps (one step is a millisecond):
/// short enough that backoff, heartbeats and timeouts all happen within a scenario.
fn engine_config(config: Config, client: usize) -> EngineConfig {
    EngineConfig {
        max_batch_parts: config.max_batch,
        // Small, so that submissions are cut by bytes too.
        max_batch_bytes: 256,
        compact_every: config.compact_every,
        sync_concurrency: 2,
        max_open_models: config.max_open_models.filter(|_| client.is_multiple_of(2)),
        initial_backoff: Duration::from_millis(2),
        max_backoff: Duration::from_millis(20),
        // As clients run: reconnections spread out, drawn from the replica id.
        reconnect_jitter_percent: 50,
        heartbeat: Duration::from_millis(40),
        silence_timeout: Duration::from_millis(150),
        request_timeout: Duration::from_millis(100),
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
