//! A seeded simulation: one server (a [`Sequencer`]) and N clients (each a [`ModelReplica`]
//! with a store that survives crashes) editing one model over an in-memory network.
//!
//! Each step the seed picks one event: a local edit, a storage batch becoming durable, a
//! message delivered, a disconnect (the last client messages may still arrive late, or
//! twice), a reconnect with resync, a client crash (everything not yet durable is lost) and
//! restart from its store, a snapshot compaction. Then every client reconnects and the
//! network drains, and [`run`] checks that every replica equals the server, that no
//! submission was committed twice, and that every change a store reported durable reached
//! the server.
//!
//! Acks are routed to the author *replica's* current connection and remote operations to
//! every other replica's, so a submission that arrives late from a dead connection is
//! acknowledged on the new one instead of coming back as a foreign operation.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use concord_ot::{ElementId, IdGenerator, ReplicaId};
use concord_protocol::{
    CollectionId, Commit, CommittedOperation, ModelId, ModelSnapshot, SessionId, Timestamp,
};
use concord_sync::{
    ModelReplica, OutgoingSubmission, Persisted, Sequencer, StoreChange, Submission, SubmitOutcome,
};

use crate::SimRng;
use crate::generate::{Source, gen_document, gen_operation_with};

/// The shape of a scenario.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub clients: usize,
    pub steps: usize,
    /// The most local operations one submission carries.
    pub max_batch: usize,
    /// Compact a replica's stored server operations after this many.
    pub compact_every: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            clients: 3,
            steps: 400,
            max_batch: 3,
            compact_every: 20,
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
    pub final_version: u64,
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

/// Messages on the simulated wire (the protocol's submit, ack, remote operation and resync,
/// reduced to what one model needs).
#[derive(Debug, Clone)]
enum ToServer {
    Submit(OutgoingSubmission),
    Resync {
        known_version: u64,
        in_flight: Option<u64>,
    },
}

#[derive(Debug, Clone)]
enum ToClient {
    Ack {
        seq: u64,
        commit: Commit,
    },
    Remote(CommittedOperation),
    ResyncStarted {
        in_flight_committed: Option<Commit>,
    },
    ResyncPage {
        operations: Vec<CommittedOperation>,
        last: bool,
    },
}

/// A batch of store changes on its way to durability, and what waits for it.
#[derive(Debug)]
struct PendingBatch {
    changes: Vec<StoreChange>,
    /// Local changes up to this seq become sendable once the batch is durable.
    durable_seq: Option<u64>,
    /// The id counter to persist with it.
    next_counter: u64,
    /// The in-flight boundary it stores; the submission goes out once it is durable.
    in_flight: Option<u64>,
}

#[derive(Debug)]
struct Client {
    replica: ReplicaId,
    /// `None` after a crash, until restarted from the store.
    state: Option<ModelReplica>,
    ids: IdGenerator,
    store: Persisted,
    stored_counter: u64,
    queue: VecDeque<PendingBatch>,
    /// The current connection's number, when connected.
    connection: Option<u64>,
    epochs: u64,
    resyncing: bool,
    to_server: VecDeque<(u64, ToServer)>,
    to_client: VecDeque<ToClient>,
    /// The highest local seq any store batch made durable.
    max_durable_seq: u64,
}

struct Server {
    sequencer: Sequencer,
    /// Clients whose current connection receives pushes (resynced).
    open: BTreeSet<usize>,
    committed: BTreeSet<(ReplicaId, u64)>,
}

/// Runs one scenario.
pub fn run(seed: u64, config: Config) -> Result<Stats, Failure> {
    let fail = |reason: String| Failure { seed, reason };
    let mut rng = SimRng::new(seed);
    let mut stats = Stats::default();
    let initial = ModelSnapshot {
        collection: CollectionId::new("sim").map_err(|e| fail(e.to_string()))?,
        version: 0,
        created_at: Timestamp(0),
        modified_at: Timestamp(0),
        data: gen_document(&mut rng),
    };
    let model = ModelId::new("model").map_err(|e| fail(e.to_string()))?;
    let mut server = Server {
        sequencer: Sequencer::new(model, initial.clone(), BTreeMap::new(), 100_000),
        open: BTreeSet::new(),
        committed: BTreeSet::new(),
    };
    let mut clients: Vec<Client> = (0..config.clients)
        .map(|i| {
            let replica = ReplicaId(i as u64 + 1);
            Client {
                replica,
                state: Some(ModelReplica::new(initial.clone())),
                ids: IdGenerator::new(replica, 0),
                store: Persisted {
                    snapshot: initial.clone(),
                    server_operations: Vec::new(),
                    pending: Vec::new(),
                    in_flight_seq: None,
                    next_seq: 1,
                },
                stored_counter: 0,
                queue: VecDeque::new(),
                connection: None,
                epochs: 0,
                resyncing: false,
                to_server: VecDeque::new(),
                to_client: VecDeque::new(),
                max_durable_seq: 0,
            }
        })
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        connect(i, client, &mut server, &mut stats);
    }

    let mut now = 0i64;
    for _ in 0..config.steps {
        now += 1;
        let i = rng.below(clients.len());
        let roll = rng.below(100);
        if (40..70).contains(&roll) && rng.flip() {
            deliver_to_server(i, &mut clients, &mut server, now, &mut stats).map_err(&fail)?;
            continue;
        }
        let client = &mut clients[i];
        match roll {
            0..=24 => local_edit(client, &mut rng, &mut stats).map_err(&fail)?,
            25..=39 => flush_one(client),
            40..=69 => deliver_to_client(client).map_err(&fail)?,
            70..=79 => {
                pump(client, config);
            }
            80..=85 => {
                if client.connection.is_some() {
                    disconnect(i, client, &mut server, &mut rng, &mut stats);
                } else if client.state.is_some() {
                    connect(i, client, &mut server, &mut stats);
                }
            }
            86..=88 => {
                crash_or_restart(i, client, &mut server, &mut rng, &mut stats).map_err(&fail)?
            }
            _ => compact(client, config),
        }
    }

    // Settle: everyone restarts, reconnects and drains.
    for (i, client) in clients.iter_mut().enumerate() {
        if client.state.is_none() {
            restart(client).map_err(&fail)?;
        }
        if client.connection.is_none() {
            connect(i, client, &mut server, &mut stats);
        }
    }
    let mut quiet_rounds = 0;
    for _ in 0..100_000 {
        now += 1;
        let mut progressed = false;
        for i in 0..clients.len() {
            let client = &mut clients[i];
            while !client.queue.is_empty() {
                flush_one(client);
                progressed = true;
            }
            if pump(client, config) {
                progressed = true;
            }
            while !clients[i].to_server.is_empty() {
                deliver_to_server(i, &mut clients, &mut server, now, &mut stats).map_err(&fail)?;
                progressed = true;
            }
            while !clients[i].to_client.is_empty() {
                deliver_to_client(&mut clients[i]).map_err(&fail)?;
                progressed = true;
            }
        }
        quiet_rounds = if progressed { 0 } else { quiet_rounds + 1 };
        if quiet_rounds == 2 {
            break;
        }
    }
    if quiet_rounds < 2 {
        return Err(fail("the network never went quiet".into()));
    }

    let truth = server.sequencer.document();
    stats.final_version = server.sequencer.version();
    for client in &clients {
        let state = client.state.as_ref().expect("restarted");
        if state.has_unacknowledged() {
            return Err(fail(format!(
                "replica {:?} still has unacknowledged changes",
                client.replica
            )));
        }
        if state.confirmed_version() != server.sequencer.version() {
            return Err(fail(format!(
                "replica {:?} is at version {}, the server at {}",
                client.replica,
                state.confirmed_version(),
                server.sequencer.version()
            )));
        }
        if state.local() != truth {
            return Err(fail(format!(
                "replica {:?} diverged:\n  replica {}\n  server  {}",
                client.replica,
                state.local().to_json(),
                truth.to_json()
            )));
        }
        let restored =
            ModelReplica::restore(client.store.clone()).map_err(|e| fail(e.to_string()))?;
        if restored.local() != truth {
            return Err(fail(format!(
                "replica {:?}: its store rebuilds a different model",
                client.replica
            )));
        }
        let committed_through = server
            .committed
            .iter()
            .filter(|(r, _)| *r == client.replica)
            .map(|(_, seq)| *seq)
            .max()
            .unwrap_or(0);
        if committed_through < client.max_durable_seq {
            return Err(fail(format!(
                "replica {:?}: durable change {} never reached the server (committed through {})",
                client.replica, client.max_durable_seq, committed_through
            )));
        }
    }
    Ok(stats)
}

fn local_edit(client: &mut Client, rng: &mut SimRng, stats: &mut Stats) -> Result<(), String> {
    let Some(state) = &mut client.state else {
        return Ok(());
    };
    let focus: Option<ElementId> = None;
    let op = gen_operation_with(rng, state.local(), &mut client.ids, focus);
    let (seq, _, change) = state
        .local_change(op)
        .map_err(|e| format!("local edit failed: {e}"))?;
    stats.local_edits += 1;
    client.queue.push_back(PendingBatch {
        changes: vec![change],
        durable_seq: Some(seq),
        next_counter: client.ids.next_counter(),
        in_flight: None,
    });
    Ok(())
}

/// Makes the oldest queued batch durable.
fn flush_one(client: &mut Client) {
    let Some(batch) = client.queue.pop_front() else {
        return;
    };
    for change in batch.changes {
        apply_to_store(&mut client.store, change);
    }
    client.stored_counter = client.stored_counter.max(batch.next_counter);
    if let Some(seq) = batch.durable_seq {
        client.max_durable_seq = client.max_durable_seq.max(seq);
        if let Some(state) = &mut client.state {
            state.mark_durable(seq);
        }
    }
    if let (Some(seq), Some(state)) = (batch.in_flight, &mut client.state) {
        state.mark_in_flight_stored(seq);
        // Send now, unless a resync is under way (its completion sends it).
        if let (Some(connection), false) = (client.connection, client.resyncing)
            && state.in_flight_seq() == Some(seq)
            && let Some(submission) = state.submission()
        {
            client
                .to_server
                .push_back((connection, ToServer::Submit(submission)));
        }
    }
}

fn apply_to_store(store: &mut Persisted, change: StoreChange) {
    match change {
        StoreChange::AppendServerOperation(op) => store.server_operations.push(op),
        StoreChange::AppendPending(p) => {
            store.next_seq = store.next_seq.max(p.seq + 1);
            store.pending.push(p);
        }
        StoreChange::ReplacePending(pending) => store.pending = pending,
        StoreChange::RemovePendingThrough(seq) => store.pending.retain(|p| p.seq > seq),
        StoreChange::SetInFlight(seq) => store.in_flight_seq = seq,
        StoreChange::PutSnapshot(snapshot) => {
            store
                .server_operations
                .retain(|op| op.version > snapshot.version);
            store.snapshot = snapshot;
        }
    }
}

fn queue_changes(client: &mut Client, changes: Vec<StoreChange>) {
    if !changes.is_empty() {
        let next_counter = client.ids.next_counter();
        client.queue.push_back(PendingBatch {
            changes,
            durable_seq: None,
            next_counter,
            in_flight: None,
        });
    }
}

/// Starts the next submission when nothing is in flight; it goes out once its boundary is
/// durable. Returns whether anything happened.
fn pump(client: &mut Client, config: Config) -> bool {
    if client.connection.is_none() || client.resyncing {
        return false;
    }
    let Some(state) = &mut client.state else {
        return false;
    };
    let Some((submission, change)) = state.take_submission(config.max_batch) else {
        return false;
    };
    let next_counter = client.ids.next_counter();
    client.queue.push_back(PendingBatch {
        changes: vec![change],
        durable_seq: None,
        next_counter,
        in_flight: Some(submission.seq),
    });
    true
}

fn connect(i: usize, client: &mut Client, server: &mut Server, stats: &mut Stats) {
    let Some(state) = &client.state else { return };
    client.epochs += 1;
    client.connection = Some(client.epochs);
    client.resyncing = true;
    client.to_client.clear();
    server.open.remove(&i);
    stats.resyncs += 1;
    let resync = ToServer::Resync {
        known_version: state.confirmed_version(),
        in_flight: state.in_flight_seq(),
    };
    client.to_server.push_back((client.epochs, resync));
}

fn disconnect(
    i: usize,
    client: &mut Client,
    server: &mut Server,
    rng: &mut SimRng,
    stats: &mut Stats,
) {
    stats.disconnects += 1;
    client.connection = None;
    client.resyncing = false;
    client.to_client.clear();
    server.open.remove(&i);
    // What was on its way to the server may still arrive, late, or twice, or be lost.
    let mut late = VecDeque::new();
    for message in client.to_server.drain(..) {
        match rng.below(4) {
            0 => {}
            1 => {
                late.push_back(message.clone());
                late.push_back(message);
            }
            _ => late.push_back(message),
        }
    }
    client.to_server = late;
}

fn crash_or_restart(
    i: usize,
    client: &mut Client,
    server: &mut Server,
    rng: &mut SimRng,
    stats: &mut Stats,
) -> Result<(), String> {
    if client.state.is_none() {
        return restart(client);
    }
    stats.crashes += 1;
    if client.connection.is_some() {
        disconnect(i, client, server, rng, stats);
    }
    client.state = None;
    client.queue.clear();
    Ok(())
}

fn restart(client: &mut Client) -> Result<(), String> {
    let state =
        ModelReplica::restore(client.store.clone()).map_err(|e| format!("restore failed: {e}"))?;
    client.state = Some(state);
    client.ids = IdGenerator::new(client.replica, client.stored_counter);
    Ok(())
}

fn compact(client: &mut Client, config: Config) {
    if let Some(state) = &mut client.state
        && let Some(change) = state.compact(config.compact_every)
    {
        queue_changes(client, vec![change]);
    }
}

fn deliver_to_server(
    i: usize,
    clients: &mut [Client],
    server: &mut Server,
    now: i64,
    stats: &mut Stats,
) -> Result<(), String> {
    let Some((connection, message)) = clients[i].to_server.pop_front() else {
        return Ok(());
    };
    let replica = clients[i].replica;
    match message {
        ToServer::Resync {
            known_version,
            in_flight,
        } => {
            if clients[i].connection != Some(connection) {
                return Ok(()); // a dead connection's resync: nobody listens for the answer
            }
            let in_flight_committed = in_flight.and_then(|seq| {
                server
                    .sequencer
                    .commit_of(concord_protocol::InFlight { replica, seq })
            });
            let operations = server
                .sequencer
                .operations_since(known_version)
                .map_err(|e| format!("resync: {e}"))?
                .to_vec();
            let client = &mut clients[i];
            client.to_client.push_back(ToClient::ResyncStarted {
                in_flight_committed,
            });
            let pages: Vec<_> = operations.chunks(5).map(<[_]>::to_vec).collect();
            if pages.is_empty() {
                client.to_client.push_back(ToClient::ResyncPage {
                    operations: Vec::new(),
                    last: true,
                });
            }
            let count = pages.len();
            for (n, page) in pages.into_iter().enumerate() {
                client.to_client.push_back(ToClient::ResyncPage {
                    operations: page,
                    last: n + 1 == count,
                });
            }
            server.open.insert(i);
        }
        ToServer::Submit(submission) => {
            let outcome = server
                .sequencer
                .submit(
                    Submission {
                        author: SessionId(format!("{i}")),
                        replica,
                        seq: submission.seq,
                        base_version: submission.base_version,
                        operation: submission.operation,
                    },
                    Timestamp(now),
                )
                .map_err(|e| format!("the server refused replica {replica:?}'s submission: {e}"))?;
            match outcome {
                SubmitOutcome::Committed(record) => {
                    if !server.committed.insert((record.replica, record.seq)) {
                        return Err(format!(
                            "({:?}, {}) committed twice",
                            record.replica, record.seq
                        ));
                    }
                    stats.commits += 1;
                    let commit = Commit {
                        version: record.operation.version,
                        timestamp: record.operation.timestamp,
                    };
                    for (j, other) in clients.iter_mut().enumerate() {
                        if !server.open.contains(&j) {
                            continue;
                        }
                        if j == i {
                            other.to_client.push_back(ToClient::Ack {
                                seq: record.seq,
                                commit,
                            });
                        } else {
                            other
                                .to_client
                                .push_back(ToClient::Remote(record.operation.clone()));
                        }
                    }
                }
                SubmitOutcome::Duplicate(commit) => {
                    stats.duplicates_answered += 1;
                    if server.open.contains(&i) {
                        clients[i].to_client.push_back(ToClient::Ack {
                            seq: submission.seq,
                            commit,
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

fn deliver_to_client(client: &mut Client) -> Result<(), String> {
    let Some(message) = client.to_client.pop_front() else {
        return Ok(());
    };
    let Some(state) = &mut client.state else {
        return Ok(());
    };
    let replica = client.replica;
    let changes = match message {
        ToClient::Ack { seq, commit } => state
            .ack(seq, commit.version, commit.timestamp)
            .map_err(|e| format!("replica {replica:?}: ack: {e}"))?,
        ToClient::Remote(op) => {
            state
                .remote(op)
                .map_err(|e| format!("replica {replica:?}: remote: {e}"))?
                .1
        }
        ToClient::ResyncStarted {
            in_flight_committed,
        } => {
            if let Some(commit) = in_flight_committed {
                state.in_flight_committed_at(commit.version);
            }
            Vec::new()
        }
        ToClient::ResyncPage { operations, last } => {
            let mut changes = Vec::new();
            for op in operations {
                changes.extend(
                    state
                        .remote(op)
                        .map_err(|e| format!("replica {replica:?}: replay: {e}"))?
                        .1,
                );
            }
            if last {
                client.resyncing = false;
                // The in-flight submission was not committed: send it again, same seq.
                if let (Some(submission), Some(connection)) =
                    (state.submission(), client.connection)
                {
                    client
                        .to_server
                        .push_back((connection, ToServer::Submit(submission)));
                }
            }
            changes
        }
    };
    queue_changes(client, changes);
    Ok(())
}
