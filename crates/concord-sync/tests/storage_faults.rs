//! The client engine over a store that fails (`concord_storage::faults`): a commit that
//! failed is never reported stored and nothing depending on it is sent; after a crash, the
//! engine restored from the store has every change it reported stored, and the server ends
//! up with each of them exactly once.
//!
//! The harness drives the engine as a driver must: it commits every queued batch as one
//! group and reports them durable only when the commit returned `Ok`; on a failed commit it
//! stops (reporting a later batch durable would cover the failed one too) and the client is
//! restarted from its store. Local change `k` adds `2^k` to a number, so the server's value
//! says exactly which changes it applied, and how often.

use concord_ot::{
    DiscreteOperation, Document, IdGenerator, OperationKind, PathSegment, ReplicaId, Value,
};
use concord_protocol::{
    ClientMessage, ClientNotice, ClientRequest, CollectionId, ModelId, ModelSnapshot, Permissions,
    ServerMessage, ServerPush, ServerResponse, SessionId, Timestamp,
};
use concord_protocol::{ReconnectToken, Session, User, UserId};
use concord_storage::faults::{Fault, Faults, FaultyAdapter, InjectedFault};
use concord_storage::{Batch, MemoryAdapter, Mutation, OfflineStore, StorageAdapter, StorageError};
use concord_sync::{
    ClientEngine, Decision, EngineConfig, Event, ModelEvent, ModelReplica, Sequencer, Submission,
    SubmitOutcome, Time, store,
};
use pollster::block_on;
use serde_json::json;

type Result<T> = anyhow::Result<T>;

fn model() -> ModelId {
    ModelId::new("m").expect("valid id")
}

fn key() -> concord_storage::StoreKey {
    concord_storage::StoreKey::new("server", "user")
}

/// `{"n": 0}` at version 0.
fn snapshot() -> Result<ModelSnapshot> {
    let mut ids = IdGenerator::new(ReplicaId(0), 0);
    let data = Document::new(Value::from_json(&json!({"n": 0}), &mut ids)?)?;
    Ok(ModelSnapshot {
        collection: CollectionId::new("c")?,
        version: 0,
        created_at: Timestamp(0),
        modified_at: Timestamp(0),
        data,
    })
}

/// Time stands still here: nothing times out.
fn now() -> Time {
    Time::from_millis(0)
}

fn n(document: &Document) -> f64 {
    document.to_json()["n"].as_f64().expect("a number")
}

/// The server: one model's sequencer, answering resyncs and submissions.
struct Server {
    sequencer: Sequencer,
    now: i64,
}

impl Server {
    fn new() -> Result<Server> {
        Ok(Server {
            sequencer: Sequencer::new(model(), snapshot()?, Default::default(), 100),
            now: 0,
        })
    }

    fn handle(&mut self, message: ClientMessage) -> Result<Vec<ServerMessage>> {
        self.now += 1;
        Ok(match message {
            ClientMessage::Request {
                id,
                request: ClientRequest::Resync { model, known_version, in_flight },
            } => {
                let response = ServerResponse::ResyncStarted {
                    model: model.clone(),
                    current_version: self.sequencer.version(),
                    in_flight_committed: in_flight.and_then(|f| self.sequencer.commit_of(f)),
                    permissions: Permissions::ALL,
                    created_at: concord_protocol::Timestamp(0),
                };
                let operations = self.sequencer.operations_since(known_version)?.to_vec();
                vec![
                    ServerMessage::Response { to: id, response },
                    ServerMessage::Push(ServerPush::ResyncPage {
                        model,
                        operations,
                        authors: vec![],
                        last: true,
                    }),
                ]
            }
            ClientMessage::Notice(ClientNotice::Submit {
                model,
                replica,
                first_seq,
                seq,
                base_version,
                operation,
            }) => {
                let submission = Submission {
                    author: SessionId("client".into()),
                    replica,
                    first_seq,
                    seq,
                    base_version,
                    operation,
                };
                let (version, timestamp) =
                    match self.sequencer.submit(submission, Timestamp(self.now))? {
                        SubmitOutcome::Committed(record) => {
                            (record.operation.version, record.operation.timestamp)
                        }
                        SubmitOutcome::Duplicate(Decision::Committed(commit)) => {
                            (commit.version, commit.timestamp)
                        }
                        refused => anyhow::bail!("a submission was refused: {refused:?}"),
                    };
                vec![ServerMessage::Push(ServerPush::Ack { model, seq, version, timestamp })]
            }
            // Completing a resync and closing need no answer here.
            _ => Vec::new(),
        })
    }

    fn n(&self) -> f64 {
        n(self.sequencer.document())
    }
}

/// A client engine and its store, driven like the client's driver drives them.
struct Client {
    engine: ClientEngine,
    store: Box<dyn OfflineStore>,
    /// Every event the engine reported.
    events: Vec<Event>,
}

impl Client {
    /// A new client whose store holds the model at version 0 (downloaded, then offline).
    fn new(adapter: &dyn StorageAdapter) -> Result<Client> {
        let store = block_on(adapter.open(&key()))?;
        let replica = ReplicaId(7);
        block_on(store.commit(Batch::new().with(Mutation::SetReplicaId(replica))))?;
        let mut client = Client {
            engine: ClientEngine::new(replica, EngineConfig::default()),
            store,
            events: vec![],
        };
        // The model as downloaded before: its record and snapshot in the store.
        let snapshot = snapshot()?;
        let record = concord_storage::ModelRecord::new(model(), snapshot.collection.clone());
        let stored = store::to_stored(&snapshot);
        let batch = Batch::new()
            .with(Mutation::PutModel(record))
            .with(Mutation::PutSnapshot { model: model(), snapshot: stored });
        block_on(client.store.commit(batch))?;
        client.engine.add_model(model(), ModelReplica::new(snapshot).into())?;
        Ok(client)
    }

    /// A client restarted from the store: the replica id and the model as stored.
    fn restore(adapter: &dyn StorageAdapter) -> Result<Client> {
        let store = block_on(adapter.open(&key()))?;
        let replica = block_on(store.replica_id())?.expect("stored");
        let state = block_on(store.load_model(&model()))?.expect("stored");
        let mut engine = ClientEngine::new(replica, EngineConfig::default());
        engine.add_model(model(), store::restore(state)?)?;
        Ok(Client { engine, store, events: Vec::new() })
    }

    /// Local change `k`: adds `2^k` to `n`. Returns its seq.
    fn change(&mut self, k: u32) -> Result<u64> {
        let document = self.engine.model(&model()).expect("loaded").local();
        let target = document.element_at(&[PathSegment::Key("n".into())]).expect("n");
        let delta = f64::from(1u32 << k);
        let operation = DiscreteOperation::new(target, OperationKind::NumberDelta { delta });
        Ok(self.engine.local_change(&model(), operation.into())?)
    }

    /// Commits every queued batch as one group, and reports them durable if it returned;
    /// again, until the engine queues no more. Returns whether anything was committed.
    fn flush(&mut self) -> std::result::Result<bool, StorageError> {
        let mut committed = false;
        loop {
            let mut batches = Vec::new();
            let mut last = None;
            while let Some(batch) = self.engine.poll_storage() {
                last = Some(batch.id);
                batches.push(Batch { mutations: store::batch_mutations(batch) });
            }
            let Some(last) = last else { return Ok(committed) };
            block_on(self.store.commit_group(batches))?;
            self.engine.handle_durable(last);
            committed = true;
        }
    }

    /// What the engine sends now; its events go to `events`.
    fn outgoing(&mut self) -> Vec<ClientMessage> {
        let outgoing = std::iter::from_fn(|| self.engine.poll_transmit(now())).collect();
        self.events.extend(std::iter::from_fn(|| self.engine.poll_event()));
        outgoing
    }

    fn connect(&mut self) -> Result<()> {
        let summaries = block_on(self.store.models())?;
        let loaded: Vec<&ModelId> = self.engine.models().collect();
        let with_changes = store::with_changes(&summaries, &loaded);
        let session = Session {
            session: SessionId("s".into()),
            user: User { id: UserId("user".into()), display_name: None, anonymous: false },
            reconnect_token: ReconnectToken("token".into()),
            server_version: "test".into(),
            limits: concord_protocol::ServerLimits {
                max_frame_bytes: 16 << 20,
                max_message_bytes: 256 << 20,
                max_open_models: 1_000,
                max_subscriptions: 10_000,
                max_shared_references: 256,
                max_reference_bytes: 4_096,
                max_model_bytes: 64 << 20,
            },
        };
        let tombstones = block_on(self.store.unsynced())?.deleted;
        self.engine.handle_connected(now(), &session, with_changes, tombstones);
        Ok(())
    }

    /// Runs the client and the server until neither has anything to say, or a commit
    /// fails (then the client stops, as a driver must).
    fn exchange(&mut self, server: &mut Server) -> Result<std::result::Result<(), StorageError>> {
        loop {
            if let Err(error) = self.flush() {
                return Ok(Err(error));
            }
            // The flush left nothing queued for the store; what is sent now depends on
            // nothing that is not durable.
            let outgoing = self.outgoing();
            if outgoing.is_empty() {
                return Ok(Ok(()));
            }
            for message in outgoing {
                for reply in server.handle(message)? {
                    self.engine.handle_message(now(), reply);
                }
            }
        }
    }

    fn stored_seqs(&self) -> Vec<u64> {
        let stored = |e: &Event| match e {
            Event::Model { event: ModelEvent::Stored { seq }, .. } => Some(*seq),
            _ => None,
        };
        self.events.iter().filter_map(stored).collect()
    }

    fn local_n(&self) -> f64 {
        n(self.engine.model(&model()).expect("loaded").local())
    }
}

fn assert_injected(result: std::result::Result<(), StorageError>, fault: Fault) {
    match &result {
        Err(error) if InjectedFault::of(error).is_some_and(|f| f.fault == fault) => {}
        other => panic!("expected an injected {fault} failure, got {other:?}"),
    }
}

fn faulty_memory() -> (FaultyAdapter<MemoryAdapter>, Faults) {
    let adapter = FaultyAdapter::new(MemoryAdapter::new());
    let faults = adapter.faults().clone();
    (adapter, faults)
}

#[test]
fn a_failed_commit_is_neither_reported_stored_nor_sent() -> Result<()> {
    let (adapter, faults) = faulty_memory();
    let mut server = Server::new()?;
    let mut client = Client::new(&adapter)?;
    client.connect()?;
    client.exchange(&mut server)??;
    for k in 0..3 {
        client.change(k)?;
        client.exchange(&mut server)??;
    }
    assert_eq!(server.n(), 7.0);
    assert_eq!(client.stored_seqs(), [1, 2, 3]);

    // The commit recording change 3 fails: the engine hears nothing of it.
    faults.fail_next(Fault::Clean);
    let seq = client.change(3)?;
    assert_eq!(client.local_n(), 15.0, "applied to the local view");
    assert_injected(client.exchange(&mut server)?, Fault::Clean);
    assert!(!client.stored_seqs().contains(&seq), "a failed commit is not reported stored");
    assert_eq!(client.engine.model(&model()).expect("loaded").durable_seq(), 3);
    assert!(client.engine.poll_transmit(now()).is_none(), "nothing depending on it is sent");
    assert_eq!(server.n(), 7.0);

    // The client restarts from its store: without the change it never reported stored.
    faults.crash();
    let mut client = Client::restore(&adapter)?;
    assert_eq!(client.local_n(), 7.0);
    client.connect()?;
    client.exchange(&mut server)??;
    assert!(client.engine.is_settled(&model()));
    client.change(4)?;
    client.exchange(&mut server)??;
    assert_eq!((server.n(), client.local_n()), (23.0, 23.0));
    Ok(())
}

#[test]
fn what_was_reported_stored_survives_a_crash_offline() -> Result<()> {
    let (adapter, faults) = faulty_memory();
    let mut server = Server::new()?;
    let mut client = Client::new(&adapter)?;
    // Offline: five changes, each stored.
    for k in 0..5 {
        client.change(k)?;
        assert!(client.flush()?);
        client.outgoing();
    }
    assert_eq!(client.stored_seqs(), [1, 2, 3, 4, 5]);
    // Change 5's commit is applied, but the client hears a failure; change 6 is never
    // committed; then the process dies.
    faults.fail_next(Fault::InDoubt);
    client.change(5)?;
    assert_injected(client.flush().map(drop), Fault::InDoubt);
    client.change(6)?;
    client.outgoing();
    assert_eq!(client.stored_seqs(), [1, 2, 3, 4, 5]);
    faults.crash();

    // Everything reported stored is there; the in-doubt change too; change 6 is not.
    let mut client = Client::restore(&adapter)?;
    let pending: Vec<u64> = block_on(client.store.load_model(&model()))?
        .expect("stored")
        .pending
        .iter()
        .map(|p| p.seq)
        .collect();
    assert_eq!(pending, [1, 2, 3, 4, 5, 6]);
    assert_eq!(client.local_n(), 63.0);
    client.connect()?;
    client.exchange(&mut server)??;
    assert!(client.engine.is_settled(&model()));
    assert_eq!(server.n(), 63.0, "each stored change reached the server once");
    Ok(())
}

#[test]
fn a_failed_acknowledgement_commit_sends_nothing_twice() -> Result<()> {
    let (adapter, faults) = faulty_memory();
    let mut server = Server::new()?;
    let mut client = Client::new(&adapter)?;
    client.connect()?;
    client.exchange(&mut server)??;
    for k in 0..3 {
        client.change(k)?;
    }
    // The changes and the in-flight boundary are stored, then the submission goes out.
    client.flush()?;
    let mut outgoing = client.outgoing();
    let [ClientMessage::Notice(ClientNotice::Submit { seq: in_flight, .. })] = outgoing[..] else {
        panic!("one submission: {outgoing:?}")
    };
    // The server commits it; the commit recording its acknowledgement fails.
    let replies = server.handle(outgoing.remove(0))?;
    let applied = server.n();
    faults.fail_next(Fault::Clean);
    for reply in replies {
        client.engine.handle_message(now(), reply);
    }
    assert_injected(client.flush().map(drop), Fault::Clean);
    faults.crash();

    // Restarted, the client still holds the submission as in flight; the resync finds it
    // committed, so it is not applied again.
    let mut client = Client::restore(&adapter)?;
    let summary = block_on(client.store.models())?.remove(0);
    assert_eq!((summary.pending_count, summary.in_flight_through), (3, Some(in_flight)));
    client.connect()?;
    client.exchange(&mut server)??;
    assert!(client.engine.is_settled(&model()));
    assert!(server.n() > applied);
    assert_eq!((server.n(), client.local_n()), (7.0, 7.0), "each change applied once");
    let summary = block_on(client.store.models())?.remove(0);
    assert_eq!((summary.pending_count, summary.in_flight_through), (0, None));
    Ok(())
}
