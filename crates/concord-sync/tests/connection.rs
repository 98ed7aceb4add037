//! The engine's connection and its time, on a clock the test moves by hand: reconnect
//! backoff, heartbeats, a silent server, a timeout for every kind of request, opening a
//! model only the server has (with and without auto-create), answering the server's pings,
//! the element-id counter across a restore from a real (memory) store, and shared references
//! through changes in flight, pending and remote.
//!
//! The server's side is played by hand: each test answers what the engine sent, or does
//! not.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, bail};
use concord_ot::{
    DiscreteOperation, Document, ElementId, IdGenerator, OperationKind, PathSegment, ReplicaId,
    Value,
};
use concord_protocol::{
    Auth, ClientMessage, ClientNotice, ClientRequest, ClientResponse, CollectionId, CreationNonce,
    ErrorCode, ErrorReply, HandshakeRejection, ModelId, ModelSnapshot, OpenedModel, Permissions,
    ReconnectToken, RequestId, ServerLimits, ServerMessage, ServerPush, ServerRequest,
    ServerResponse, Session, SessionId, Timestamp, User, UserId,
};
use concord_storage::memory::MemoryStore;
use concord_storage::{
    Batch, MemoryAdapter, ModelRecord, Mutation, OfflineStore, StoreKey, Tombstone,
};
use concord_sync::{
    Action, ClientEngine, ConnectionState, DisconnectReason, DomainEvent, EngineConfig, Event,
    ModelEvent, ModelReplica, OpenFailure, StorageBatch, StoreChange, Time, store,
};
use pollster::block_on;
use serde_json::json;

const REPLICA: ReplicaId = ReplicaId(1);
/// When the test server says it created a model, by its clock.
const SERVER_CREATED: Timestamp = Timestamp(1_700_000_000_042);

fn at(millis: u64) -> Time {
    Time::from_millis(millis)
}

/// Short, distinct durations, so that each deadline can be told apart; reconnect waits
/// without jitter, so that they are exact.
fn config() -> EngineConfig {
    EngineConfig {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(800),
        reconnect_jitter_percent: 0,
        heartbeat: Duration::from_secs(1),
        silence_timeout: Duration::from_secs(3),
        request_timeout: Duration::from_secs(2),
        ..EngineConfig::default()
    }
}

fn credentials() -> Auth {
    Auth::Jwt("alice's token".into())
}

fn token() -> ReconnectToken {
    ReconnectToken("reconnect".into())
}

fn session() -> Session {
    Session {
        session: SessionId("s1".into()),
        user: User { id: UserId("alice".into()), display_name: None, anonymous: false },
        reconnect_token: token(),
        server_version: "test".into(),
        limits: limits(),
    }
}

fn limits() -> ServerLimits {
    ServerLimits {
        max_frame_bytes: 1 << 20,
        max_message_bytes: 4 << 20,
        max_open_models: 3,
        max_subscriptions: 5,
        max_shared_references: 7,
        max_reference_bytes: 64,
        max_model_bytes: 2 << 20,
    }
}

fn id(name: &str) -> ModelId {
    ModelId::new(name).expect("a valid id")
}

fn notes() -> CollectionId {
    CollectionId::new("notes").expect("a valid id")
}

/// `{"n": 1, "list": []}`, made by another replica.
fn snapshot() -> Result<ModelSnapshot> {
    let mut ids = IdGenerator::new(ReplicaId(0), 0);
    let data = Document::new(Value::from_json(&json!({"n": 1, "list": []}), &mut ids)?)?;
    Ok(ModelSnapshot {
        collection: notes(),
        version: 0,
        created_at: Timestamp(0),
        modified_at: Timestamp(0),
        data,
    })
}

fn number_delta(document: &Document) -> concord_ot::Operation {
    let n = document.element_at(&[PathSegment::Key("n".into())]).expect("n");
    DiscreteOperation::new(n, OperationKind::NumberDelta { delta: 1.0 }).into()
}

/// What one turn of the engine produced: batches (made durable at once), messages sent at
/// the turn's time, events and actions.
#[derive(Debug, Default)]
struct Turn {
    batches: Vec<StorageBatch>,
    sent: Vec<ClientMessage>,
    events: Vec<Event>,
    actions: Vec<Action>,
}

impl Turn {
    fn requests(&self) -> impl Iterator<Item = (RequestId, &ClientRequest)> {
        self.sent.iter().filter_map(|m| match m {
            ClientMessage::Request { id, request } => Some((*id, request)),
            _ => None,
        })
    }

    fn states(&self) -> Vec<ConnectionState> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Domain(DomainEvent::State(state)) => Some(state.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Drains the engine in its documented order, the store making every batch durable at once.
fn drain(engine: &mut ClientEngine, now: Time) -> Turn {
    let mut turn = Turn::default();
    loop {
        let mut last = None;
        while let Some(batch) = engine.poll_storage() {
            last = Some(batch.id);
            turn.batches.push(batch);
        }
        if let Some(last) = last {
            engine.handle_durable(last);
            continue;
        }
        turn.sent.extend(std::iter::from_fn(|| engine.poll_transmit(now)));
        turn.events.extend(std::iter::from_fn(|| engine.poll_event()));
        turn.actions.extend(std::iter::from_fn(|| engine.poll_action()));
        return turn;
    }
}

/// What a server holding every model at version 0 answers to `message`.
fn answer(message: &ClientMessage) -> Result<Vec<ServerMessage>> {
    let response = |to, response| vec![ServerMessage::Response { to, response }];
    Ok(match message.clone() {
        ClientMessage::Request { id, request } => match request {
            ClientRequest::Resync { model, known_version, .. } => vec![
                ServerMessage::Response {
                    to: id,
                    response: ServerResponse::ResyncStarted {
                        model: model.clone(),
                        current_version: known_version,
                        in_flight_committed: None,
                        permissions: Permissions::ALL,
                        created_at: SERVER_CREATED,
                    },
                },
                ServerMessage::Push(ServerPush::ResyncPage {
                    model,
                    operations: vec![],
                    authors: vec![],
                    last: true,
                }),
            ],
            // Created (if asked), resynced, the submission acknowledged, closed.
            ClientRequest::Sync { model, known_version, submission, .. } => {
                let mut replies = vec![
                    ServerMessage::Response {
                        to: id,
                        response: ServerResponse::ResyncStarted {
                            model: model.clone(),
                            current_version: known_version,
                            in_flight_committed: None,
                            permissions: Permissions::ALL,
                            created_at: SERVER_CREATED,
                        },
                    },
                    ServerMessage::Push(ServerPush::ResyncPage {
                        model: model.clone(),
                        operations: vec![],
                        authors: vec![],
                        last: true,
                    }),
                ];
                if let Some(submission) = submission {
                    replies.push(ServerMessage::Push(ServerPush::Ack {
                        model,
                        seq: submission.seq,
                        version: submission.base_version + 1,
                        timestamp: Timestamp(0),
                    }));
                }
                replies
            }
            ClientRequest::ResyncComplete { model, .. } => response(
                id,
                ServerResponse::ResyncCompleted {
                    model,
                    collaborators: vec![],
                    references: vec![],
                },
            ),
            ClientRequest::CreateModel { model, .. } => response(
                id,
                ServerResponse::ModelCreated { model, version: 0, created_at: SERVER_CREATED },
            ),
            ClientRequest::OpenModel { model, .. } => response(
                id,
                ServerResponse::ModelOpened(OpenedModel {
                    model,
                    snapshot: snapshot()?,
                    permissions: Permissions::ALL,
                    collaborators: vec![],
                    references: vec![],
                }),
            ),
            ClientRequest::CloseModel { .. }
            | ClientRequest::DeleteModel { .. }
            | ClientRequest::SubscribeOffline { .. } => response(id, ServerResponse::Done),
            ClientRequest::Ping => response(id, ServerResponse::Pong),
            other => bail!("the test server does not answer {other:?}"),
        },
        ClientMessage::Notice(ClientNotice::Submit { model, seq, base_version, .. }) => {
            vec![ServerMessage::Push(ServerPush::Ack {
                model,
                seq,
                version: base_version + 1,
                timestamp: Timestamp(0),
            })]
        }
        ClientMessage::Response { .. } | ClientMessage::Error { .. } | ClientMessage::Notice(_) => {
            vec![]
        }
    })
}

/// Answers what was sent, and what that makes the engine send, until it sends nothing
/// more; returns everything that happened.
fn settle(engine: &mut ClientEngine, now: Time, turn: Turn) -> Result<Turn> {
    settle_refusing(engine, now, turn, |_| None)
}

#[test]
fn the_servers_limits_from_the_handshake_are_kept_while_offline() -> Result<()> {
    let mut engine = ClientEngine::new(REPLICA, config());
    assert_eq!(engine.server_limits(), None, "nothing before a handshake");
    engine.connect(credentials());
    assert!(matches!(engine.poll_action(), Some(Action::Connect { .. })));
    engine.handle_connected(at(0), &session(), vec![], vec![]);
    assert_eq!(engine.server_limits(), Some(limits()));
    engine.handle_disconnected(at(10));
    assert_eq!(engine.server_limits(), Some(limits()));
    Ok(())
}

/// An engine that connected at `now` through its own `connect` (the driver carrying out
/// `Action::Connect`), with `models` loaded and live.
fn connected(config: EngineConfig, now: Time, models: &[&str]) -> Result<ClientEngine> {
    let mut engine = ClientEngine::new(REPLICA, config);
    for model in models {
        engine.add_model(id(model), ModelReplica::new(snapshot()?).into())?;
    }
    engine.connect(credentials());
    assert_eq!(engine.poll_action(), Some(Action::Connect { auth: credentials() }));
    engine.handle_connected(now, &session(), vec![], vec![]);
    let turn = drain(&mut engine, now);
    settle(&mut engine, now, turn)?;
    for model in models {
        assert!(engine.is_settled(&id(model)), "{model} is live");
    }
    Ok(engine)
}

/// Runs the reconnection the engine asks for at its next deadline, failing it when `fail`.
/// Returns when that attempt was asked for.
fn attempt(engine: &mut ClientEngine, fail: Option<HandshakeRejection>) -> Result<Time> {
    let Some(when) = engine.poll_timeout() else { bail!("no reconnection is scheduled") };
    engine.handle_timeout(at(when.as_millis() - 1));
    assert!(drain(engine, when).actions.is_empty(), "nothing before the deadline");
    engine.handle_timeout(when);
    let turn = drain(engine, when);
    assert_eq!(turn.actions, vec![Action::Connect { auth: Auth::Reconnect(token()) }]);
    engine.handle_connect_failed(when, fail);
    Ok(when)
}

#[test]
fn reconnect_backoff_doubles_up_to_the_cap_and_starts_over_once_connected() -> Result<()> {
    let mut engine = connected(config(), at(0), &["m"])?;
    engine.handle_disconnected(at(1_000));
    let turn = drain(&mut engine, at(1_000));
    assert_eq!(turn.states(), vec![ConnectionState::Reconnecting]);
    assert!(turn.events.contains(&Event::Model { model: id("m"), event: ModelEvent::Offline }));
    assert!(turn.actions.is_empty(), "the engine does not close what already broke");

    // Each failed attempt doubles the wait, up to the cap.
    let mut last = at(1_000);
    let mut waits = Vec::new();
    for _ in 0..6 {
        let when = attempt(&mut engine, None)?;
        waits.push(when.as_millis() - last.as_millis());
        last = when;
    }
    assert_eq!(waits, vec![100, 200, 400, 800, 800, 800]);
    assert_eq!(engine.connection_state(), ConnectionState::Reconnecting);

    // The next attempt succeeds: the loaded model resyncs, and the backoff starts over.
    let when = engine.poll_timeout().expect("scheduled");
    engine.handle_timeout(when);
    let turn = drain(&mut engine, when);
    assert!(matches!(turn.actions[..], [Action::Connect { .. }]));
    // Reconnecting after the last failure, then connecting again.
    assert_eq!(turn.states(), vec![ConnectionState::Reconnecting, ConnectionState::Connecting]);
    engine.handle_connected(when, &session(), vec![], vec![]);
    let turn = drain(&mut engine, when);
    assert_eq!(turn.states(), vec![ConnectionState::Connected]);
    assert!(turn.requests().any(|(_, r)| matches!(r, ClientRequest::Resync { .. })));
    settle(&mut engine, when, turn)?;
    engine.handle_disconnected(at(20_000));
    assert_eq!(engine.poll_timeout(), Some(at(20_100)));
    Ok(())
}

/// The waits before each reconnection attempt of an engine of `replica` with `jitter_percent`,
/// dropped at 1 s and failing every attempt.
fn reconnect_waits(replica: u64, jitter_percent: u8, attempts: usize) -> Result<Vec<u64>> {
    let config = EngineConfig { reconnect_jitter_percent: jitter_percent, ..config() };
    let mut engine = ClientEngine::new(ReplicaId(replica), config);
    engine.connect(credentials());
    engine.poll_action();
    engine.handle_connected(at(0), &session(), vec![], vec![]);
    engine.handle_disconnected(at(1_000));
    let mut last = at(1_000);
    let mut waits = Vec::new();
    for _ in 0..attempts {
        let when = attempt(&mut engine, None)?;
        waits.push(when.as_millis() - last.as_millis());
        last = when;
    }
    Ok(waits)
}

#[test]
fn reconnect_waits_are_spread_below_the_backoff_and_differ_between_replicas() -> Result<()> {
    // Each wait lies between half the backoff and the backoff, which still doubles.
    let backoffs = [100, 200, 400, 800, 800, 800];
    let mut first_waits = BTreeSet::new();
    for replica in 1..=20 {
        let waits = reconnect_waits(replica, 50, backoffs.len())?;
        for (wait, backoff) in waits.iter().zip(backoffs) {
            assert!((backoff / 2..=backoff).contains(wait), "replica {replica}: {waits:?}");
        }
        // Randomness is a parameter: the same replica waits the same again.
        assert_eq!(waits, reconnect_waits(replica, 50, backoffs.len())?);
        first_waits.insert(waits[0]);
    }
    // Twenty clients dropped together do not come back together.
    assert!(first_waits.len() >= 10, "first waits {first_waits:?}");

    // None of the backoff may be random, or all of it (and more than 100 % is 100 %).
    assert_eq!(reconnect_waits(7, 0, backoffs.len())?, backoffs);
    for percent in [100, 255] {
        let waits = reconnect_waits(7, percent, backoffs.len())?;
        assert!(waits.iter().zip(backoffs).all(|(w, b)| *w <= b), "{percent} %: {waits:?}");
    }
    Ok(())
}

/// The deletions `turn` asks of the server, with the creation each names.
fn deletions(turn: &Turn) -> Vec<(ModelId, Option<CreationNonce>)> {
    turn.requests()
        .filter_map(|(_, r)| match r {
            ClientRequest::DeleteModel { model, creation } => Some((model.clone(), *creation)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_deletion_names_the_creation_the_server_never_confirmed_also_after_a_restart() -> Result<()> {
    let nonce = CreationNonce([7; 16]);
    let mut engine = ClientEngine::new(REPLICA, config());
    engine.create_model(id("new"), notes(), snapshot()?.data, nonce, Timestamp(0))?;
    drain(&mut engine, at(0));
    engine.delete_model(id("new"), notes(), None);
    // A model not in memory: the store's unconfirmed creation, as the caller read it.
    let stored = CreationNonce([8; 16]);
    engine.delete_model(id("far"), notes(), Some(stored));
    drain(&mut engine, at(0));
    engine.connect(credentials());
    engine.poll_action();
    engine.handle_connected(at(1), &session(), vec![], vec![]);
    let turn = drain(&mut engine, at(1));
    assert_eq!(deletions(&turn), vec![(id("far"), Some(stored)), (id("new"), Some(nonce))]);

    // Restarted, the engine learns it from the store's tombstone.
    let mut restarted = ClientEngine::new(REPLICA, config());
    restarted.connect(credentials());
    restarted.poll_action();
    let tombstone = Tombstone { model: id("new"), collection: notes(), creation: Some(nonce) };
    restarted.handle_connected(at(2), &session(), vec![], vec![tombstone]);
    assert_eq!(deletions(&drain(&mut restarted, at(2))), vec![(id("new"), Some(nonce))]);

    // A model the server confirmed is deleted by id alone.
    let mut engine = connected(config(), at(0), &["m"])?;
    engine.delete_model(id("m"), notes(), None);
    assert_eq!(deletions(&drain(&mut engine, at(1))), vec![(id("m"), None)]);
    Ok(())
}

/// The one deletion request `turn` sends.
fn deletion_request(turn: &Turn) -> Result<RequestId> {
    let sent: Vec<RequestId> = turn
        .requests()
        .filter(|(_, r)| matches!(r, ClientRequest::DeleteModel { .. }))
        .map(|(id, _)| id)
        .collect();
    let [id] = sent[..] else { bail!("one deletion request, got {:?}", turn.sent) };
    Ok(id)
}

fn refuse(engine: &mut ClientEngine, now: Time, to: RequestId, code: ErrorCode) {
    let error = ErrorReply::new(code, "refused");
    engine.handle_message(now, ServerMessage::Error { to: Some(to), error });
}

#[test]
fn a_deletion_the_server_cannot_take_now_is_asked_again_and_is_never_undone() -> Result<()> {
    let mut engine = connected(config(), at(0), &["m"])?;
    engine.delete_model(id("m"), notes(), None);
    let mut to = deletion_request(&drain(&mut engine, at(1)))?;
    let mut now = 1;
    for code in [ErrorCode::UNAVAILABLE, ErrorCode::OVERLOADED, ErrorCode::INTERNAL] {
        refuse(&mut engine, at(now), to, code);
        let turn = drain(&mut engine, at(now));
        assert!(turn.batches.is_empty(), "{code}: the tombstone stays, {:?}", turn.batches);
        assert!(turn.events.is_empty(), "{code}: nothing to tell yet, {:?}", turn.events);
        // Asked again at the backoff's deadline, not before.
        let Some(retry) = engine.poll_timeout() else { bail!("{code}: no retry scheduled") };
        assert!(retry > at(now), "{code}: a backoff");
        engine.handle_timeout(at(retry.as_millis() - 1));
        assert!(deletions(&drain(&mut engine, at(retry.as_millis() - 1))).is_empty());
        now = retry.as_millis();
        engine.handle_timeout(at(now));
        to = deletion_request(&drain(&mut engine, at(now)))?;
    }
    // Waiting to ask again holds back nothing else: an open goes out at once.
    refuse(&mut engine, at(now), to, ErrorCode::UNAVAILABLE);
    engine.open_at_server(id("other"), None)?;
    let turn = drain(&mut engine, at(now));
    assert!(
        turn.requests().any(|(_, r)| matches!(r, ClientRequest::OpenModel { .. })),
        "{:?}",
        turn.sent
    );
    // Asked again within the longest backoff; the open and the heartbeat answered meanwhile.
    let deadline = now + config().max_backoff.as_millis() as u64;
    loop {
        let Some(next) = engine.poll_timeout() else { bail!("nothing scheduled") };
        now = next.as_millis();
        if now > deadline {
            bail!("the deletion was not asked again by {deadline} ms");
        }
        engine.handle_timeout(next);
        let turn = drain(&mut engine, next);
        if let Ok(id) = deletion_request(&turn) {
            to = id;
            break;
        }
        settle(&mut engine, next, turn)?;
    }
    let done = ServerMessage::Response { to, response: ServerResponse::Done };
    engine.handle_message(at(now), done);
    let turn = drain(&mut engine, at(now));
    let [batch] = &turn.batches[..] else { bail!("one batch, got {:?}", turn.batches) };
    assert_eq!(batch.changes, vec![StoreChange::Forget]);
    assert!(turn.events.contains(&Event::Domain(DomainEvent::Deleted { model: id("m") })));
    Ok(())
}

#[test]
fn a_creation_the_server_cannot_take_now_is_sent_again_not_refused() -> Result<()> {
    let model = id("new");
    let nonce = CreationNonce([7; 16]);
    let mut engine = connected(config(), at(0), &[])?;
    engine.create_model(model.clone(), notes(), snapshot()?.data, nonce, Timestamp(0))?;
    let creation = |turn: &Turn| -> Result<RequestId> {
        let sent: Vec<RequestId> = turn
            .requests()
            .filter(
                |(_, r)| matches!(r, ClientRequest::CreateModel { nonce: n, .. } if *n == nonce),
            )
            .map(|(id, _)| id)
            .collect();
        let [id] = sent[..] else { bail!("one creation request, got {:?}", turn.sent) };
        Ok(id)
    };
    let mut to = creation(&drain(&mut engine, at(1)))?;
    let mut now = 1;
    for code in [ErrorCode::UNAVAILABLE, ErrorCode::OVERLOADED, ErrorCode::INTERNAL] {
        refuse(&mut engine, at(now), to, code);
        let turn = drain(&mut engine, at(now));
        let refused = turn
            .events
            .iter()
            .any(|e| matches!(e, Event::Domain(DomainEvent::CreationRefused { .. })));
        assert!(!refused, "{code}: not refused, {:?}", turn.events);
        assert!(turn.sent.is_empty(), "{code}: not at once, {:?}", turn.sent);
        let Some(retry) = engine.poll_timeout() else { bail!("{code}: no retry scheduled") };
        now = retry.as_millis();
        engine.handle_timeout(at(now));
        to = creation(&drain(&mut engine, at(now)))?;
    }
    let created =
        ServerResponse::ModelCreated { model: model.clone(), version: 0, created_at: Timestamp(0) };
    engine.handle_message(at(now), ServerMessage::Response { to, response: created });
    let turn = drain(&mut engine, at(now));
    assert!(turn.events.contains(&Event::Domain(DomainEvent::Created { model: model.clone() })));
    settle(&mut engine, at(now), turn)?;
    assert!(engine.is_settled(&model), "live once created");
    Ok(())
}

#[test]
fn a_refused_deletion_brings_back_an_unconfirmed_creation_as_still_owed() -> Result<()> {
    let model = id("new");
    let nonce = CreationNonce([7; 16]);
    let store = MemoryAdapter::new().open_store(&StoreKey::new("test", "alice"))?;
    let commit = |turn: &Turn| store_turn(&store, turn);
    let mut engine = ClientEngine::new(REPLICA, config());
    engine.create_model(model.clone(), notes(), snapshot()?.data, nonce, Timestamp(0))?;
    commit(&drain(&mut engine, at(0)))?;
    engine.delete_model(model.clone(), notes(), None);
    commit(&drain(&mut engine, at(0)))?;
    engine.connect(credentials());
    engine.poll_action();
    let tombstones = block_on(store.unsynced())?.deleted;
    engine.handle_connected(at(1), &session(), vec![], tombstones);
    let turn = drain(&mut engine, at(1));
    commit(&turn)?;
    let to = deletion_request(&turn)?;

    // Refused for good: the model is back, and its creation is still owed to the server.
    refuse(&mut engine, at(2), to, ErrorCode::PERMISSION_DENIED);
    let turn = drain(&mut engine, at(2));
    commit(&turn)?;
    assert!(turn.events.iter().any(|e| matches!(
        e,
        Event::Domain(DomainEvent::DeletionRefused { model: m, .. }) if *m == model
    )));
    let unsynced = block_on(store.unsynced())?;
    assert_eq!((unsynced.changed, unsynced.deleted), (vec![model.clone()], vec![]));
    let state = block_on(store.load_model(&model))?.expect("kept");
    assert!(state.summary.record.created_locally);
    assert_eq!(store::restore(state)?.creation, Some(nonce));
    Ok(())
}

#[test]
fn a_refused_reconnect_token_makes_way_for_the_credentials_at_once() -> Result<()> {
    let mut engine = connected(config(), at(0), &[])?;
    engine.handle_disconnected(at(500));
    let expired = HandshakeRejection {
        code: ErrorCode::TOKEN_EXPIRED,
        message: "expired".into(),
        retry_allowed: true,
    };
    let when = attempt(&mut engine, Some(expired))?;
    let turn = drain(&mut engine, when);
    assert_eq!(turn.actions, vec![Action::Connect { auth: credentials() }], "without waiting");

    // Refused for good: the engine stops and says why.
    let refused = HandshakeRejection {
        code: ErrorCode::AUTHENTICATION_FAILED,
        message: "no such user".into(),
        retry_allowed: false,
    };
    engine.handle_connect_failed(when, Some(refused.clone()));
    let turn = drain(&mut engine, when);
    assert!(turn.events.contains(&Event::Domain(DomainEvent::ConnectionRefused(refused))));
    assert_eq!(turn.states(), vec![ConnectionState::Disconnected]);
    assert_eq!(engine.poll_timeout(), None, "no more attempts");
    Ok(())
}

#[test]
fn the_applications_own_connect_is_reported_not_retried_and_disconnect_stops_reconnecting()
-> Result<()> {
    let mut engine = ClientEngine::new(REPLICA, config());
    engine.connect(credentials());
    let turn = drain(&mut engine, at(0));
    assert_eq!(turn.actions, vec![Action::Connect { auth: credentials() }]);
    assert_eq!(turn.states(), vec![ConnectionState::Connecting]);
    engine.handle_connect_failed(at(10), None);
    assert_eq!(drain(&mut engine, at(10)).states(), vec![ConnectionState::Disconnected]);
    assert_eq!(engine.poll_timeout(), None);

    let mut engine = connected(config(), at(0), &[])?;
    engine.disconnect();
    let turn = drain(&mut engine, at(5));
    assert_eq!(turn.actions, vec![Action::Disconnect { reason: DisconnectReason::Requested }]);
    assert_eq!(turn.states(), vec![ConnectionState::Disconnected]);
    assert_eq!(engine.poll_timeout(), None, "no heartbeat, no reconnection");
    Ok(())
}

#[test]
fn heartbeat_pings_go_out_every_interval_and_a_silent_server_is_dropped() -> Result<()> {
    let config = EngineConfig { request_timeout: Duration::from_secs(3600), ..config() };
    let mut engine = connected(config, at(0), &["m"])?;
    // While the server answers, a ping goes out every second and the connection stays.
    let mut pings = Vec::new();
    for _ in 0..10 {
        let when = engine.poll_timeout().expect("a heartbeat is due");
        engine.handle_timeout(when);
        let turn = drain(&mut engine, when);
        assert!(turn.actions.is_empty(), "{:?} at {when:?}", turn.actions);
        for (id, request) in turn.requests() {
            assert_eq!(*request, ClientRequest::Ping);
            pings.push(when.as_millis());
            let pong = ServerMessage::Response { to: id, response: ServerResponse::Pong };
            engine.handle_message(at(when.as_millis() + 10), pong);
        }
    }
    assert_eq!(pings, (1..=10).map(|s| s * 1_000).collect::<Vec<u64>>());

    // Then the server goes silent (last heard at 10,010): pings still go out, unanswered,
    // and three seconds after the last word the connection is dropped.
    let mut dropped = None;
    for _ in 0..10 {
        let when = engine.poll_timeout().expect("a deadline");
        engine.handle_timeout(when);
        let turn = drain(&mut engine, when);
        if let Some(action) = turn.actions.first() {
            assert_eq!(turn.states(), vec![ConnectionState::Reconnecting]);
            dropped = Some((when, action.clone()));
            break;
        }
    }
    let reason = DisconnectReason::ServerSilent;
    assert_eq!(dropped, Some((at(13_010), Action::Disconnect { reason })));
    assert_eq!(engine.poll_timeout(), Some(at(13_110)), "reconnects after the backoff");
    Ok(())
}

/// How to make a connected engine (model "m" loaded and live) send one kind of request.
struct Case {
    name: &'static str,
    provoke: fn(&mut ClientEngine, Time) -> Result<Turn>,
    is_it: fn(&ClientMessage) -> bool,
}

fn request_is(message: &ClientMessage, check: fn(&ClientRequest) -> bool) -> bool {
    matches!(message, ClientMessage::Request { request, .. } if check(request))
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "resync",
            provoke: |engine, now| {
                engine.add_model(id("other"), ModelReplica::new(snapshot()?).into())?;
                Ok(drain(engine, now))
            },
            is_it: |m| request_is(m, |r| matches!(r, ClientRequest::Resync { .. })),
        },
        Case {
            name: "resync complete",
            provoke: |engine, now| {
                engine.add_model(id("other"), ModelReplica::new(snapshot()?).into())?;
                let turn = drain(engine, now);
                for message in &turn.sent {
                    for reply in answer(message)? {
                        engine.handle_message(now, reply);
                    }
                }
                Ok(drain(engine, now))
            },
            is_it: |m| request_is(m, |r| matches!(r, ClientRequest::ResyncComplete { .. })),
        },
        Case {
            name: "create",
            provoke: |engine, now| {
                let data = snapshot()?.data;
                let nonce = CreationNonce([7; 16]);
                engine.create_model(id("new"), notes(), data, nonce, Timestamp(0))?;
                Ok(drain(engine, now))
            },
            is_it: |m| request_is(m, |r| matches!(r, ClientRequest::CreateModel { .. })),
        },
        Case {
            name: "delete",
            provoke: |engine, now| {
                engine.delete_model(id("m"), notes(), None);
                Ok(drain(engine, now))
            },
            is_it: |m| request_is(m, |r| matches!(r, ClientRequest::DeleteModel { .. })),
        },
        Case {
            name: "subscribe",
            provoke: |engine, now| {
                engine.subscribe(vec![(id("far"), None)]);
                Ok(drain(engine, now))
            },
            is_it: |m| request_is(m, |r| matches!(r, ClientRequest::SubscribeOffline { .. })),
        },
        Case {
            name: "close",
            provoke: |engine, now| {
                engine.remove_model(&id("m"));
                Ok(drain(engine, now))
            },
            is_it: |m| request_is(m, |r| matches!(r, ClientRequest::CloseModel { .. })),
        },
        Case {
            name: "open",
            provoke: |engine, now| {
                engine.open_at_server(id("remote"), None)?;
                Ok(drain(engine, now))
            },
            is_it: |m| request_is(m, |r| matches!(r, ClientRequest::OpenModel { .. })),
        },
        Case {
            name: "ping",
            provoke: |engine, now| {
                engine.handle_timeout(now);
                Ok(drain(engine, now))
            },
            is_it: |m| request_is(m, |r| *r == ClientRequest::Ping),
        },
        Case {
            name: "submission",
            provoke: |engine, now| {
                let model = id("m");
                let document = engine.model(&model).expect("loaded").local().clone();
                engine.local_change(&model, number_delta(&document))?;
                Ok(drain(engine, now))
            },
            is_it: |m| matches!(m, ClientMessage::Notice(ClientNotice::Submit { .. })),
        },
    ]
}

/// Connects, provokes the case's request at 1 s (the heartbeat's time, so the ping case
/// needs no other clock), answers everything else, and returns the engine with only that
/// request unanswered.
fn unanswered(case: &Case) -> Result<(ClientEngine, ClientMessage)> {
    let config = EngineConfig { silence_timeout: Duration::from_secs(3600), ..config() };
    let mut engine = connected(config, at(0), &["m"])?;
    let now = at(1_000);
    let turn = (case.provoke)(&mut engine, now)?;
    let (target, others): (Vec<_>, Vec<_>) = turn.sent.into_iter().partition(|m| (case.is_it)(m));
    let [target] = &target[..] else {
        bail!("{}: expected one such message, sent {target:?}", case.name)
    };
    settle(&mut engine, now, Turn { sent: others, ..Turn::default() })?;
    Ok((engine, target.clone()))
}

#[test]
fn every_kind_of_request_unanswered_in_time_drops_the_connection_and_resyncs_on_a_new_one()
-> Result<()> {
    for case in cases() {
        let name = case.name;
        let (mut engine, _) = unanswered(&case)?;
        // Sent at 1 s, due at 3 s: nothing happens before.
        engine.handle_timeout(at(2_999));
        let turn = drain(&mut engine, at(2_999));
        assert!(turn.actions.is_empty(), "{name}: {:?}", turn.actions);
        assert_eq!(engine.poll_timeout(), Some(at(3_000)), "{name}");

        engine.handle_timeout(at(3_000));
        let turn = drain(&mut engine, at(3_000));
        let reason = DisconnectReason::RequestTimedOut;
        assert_eq!(turn.actions, vec![Action::Disconnect { reason }], "{name}");
        assert_eq!(turn.states(), vec![ConnectionState::Reconnecting], "{name}");
        if name == "open" {
            let failed =
                DomainEvent::OpenFailed { model: id("remote"), failure: OpenFailure::TimedOut };
            assert!(turn.events.contains(&Event::Domain(failed)), "{name}: {:?}", turn.events);
        }

        // A new connection after the backoff: what was loaded resyncs there.
        assert_eq!(engine.poll_timeout(), Some(at(3_100)), "{name}");
        engine.handle_timeout(at(3_100));
        let turn = drain(&mut engine, at(3_100));
        assert!(matches!(turn.actions[..], [Action::Connect { .. }]), "{name}");
        engine.handle_connected(at(3_200), &session(), vec![], vec![]);
        let turn = drain(&mut engine, at(3_200));
        let resynced: Vec<&ModelId> = turn
            .requests()
            .filter_map(|(_, r)| match r {
                ClientRequest::Resync { model, .. } => Some(model),
                _ => None,
            })
            .collect();
        assert!(!resynced.is_empty() || name == "close" || name == "delete", "{name}");
        settle(&mut engine, at(3_200), turn)?;
        for model in engine.models().cloned().collect::<Vec<_>>() {
            assert!(engine.is_settled(&model), "{name}: {model} is live again");
        }
    }
    Ok(())
}

#[test]
fn every_kind_of_request_answered_in_time_keeps_the_connection() -> Result<()> {
    for case in cases() {
        let name = case.name;
        let (mut engine, target) = unanswered(&case)?;
        for reply in answer(&target)? {
            engine.handle_message(at(2_999), reply);
        }
        let turn = drain(&mut engine, at(2_999));
        settle(&mut engine, at(2_999), turn)?;
        // Pings go out meanwhile; each is answered at once.
        for millis in [3_000, 3_500, 5_000] {
            engine.handle_timeout(at(millis));
            let turn = drain(&mut engine, at(millis));
            assert!(turn.actions.is_empty(), "{name} at {millis}: {:?}", turn.actions);
            settle(&mut engine, at(millis), turn)?;
        }
    }
    Ok(())
}

#[test]
fn a_model_only_the_server_has_is_opened_there_downloaded_and_synced() -> Result<()> {
    let mut engine = connected(config(), at(0), &[])?;
    let model = id("remote");
    engine.open_at_server(model.clone(), None)?;
    engine.open_at_server(model.clone(), None)?; // a second open joins the first
    let turn = drain(&mut engine, at(10));
    let opens: Vec<_> = turn.requests().collect();
    let [(open, ClientRequest::OpenModel { auto_create: false, .. })] = opens[..] else {
        bail!("one open without auto-create, got {opens:?}")
    };
    let opened = OpenedModel {
        model: model.clone(),
        snapshot: snapshot()?,
        permissions: Permissions::ALL,
        collaborators: vec![],
        references: vec![],
    };
    let reply = ServerResponse::ModelOpened(opened);
    engine.handle_message(at(20), ServerMessage::Response { to: open, response: reply });
    let turn = drain(&mut engine, at(20));
    assert!(turn.events.contains(&Event::Domain(DomainEvent::Opened { model: model.clone() })));
    let downloaded = StoreChange::Downloaded { snapshot: snapshot()? };
    assert!(turn.batches.iter().any(|b| b.model == model && b.changes == vec![downloaded.clone()]));
    assert!(turn.requests().any(|(_, r)| matches!(r, ClientRequest::Resync { .. })));
    settle(&mut engine, at(20), turn)?;
    assert!(engine.is_settled(&model));
    assert_eq!(engine.model(&model).expect("loaded").local(), &snapshot()?.data);

    // Refused, the open fails with the server's reason.
    engine.open_at_server(id("missing"), None)?;
    let turn = drain(&mut engine, at(30));
    let (open, _) = turn.requests().next().expect("an open");
    let error = ErrorReply::new(ErrorCode::MODEL_NOT_FOUND, "no such model");
    engine.handle_message(at(40), ServerMessage::Error { to: Some(open), error: error.clone() });
    let failed =
        DomainEvent::OpenFailed { model: id("missing"), failure: OpenFailure::Refused(error) };
    assert!(drain(&mut engine, at(40)).events.contains(&Event::Domain(failed)));

    // Lost with the connection.
    engine.open_at_server(id("late"), None)?;
    drain(&mut engine, at(50));
    engine.handle_disconnected(at(60));
    let failed =
        DomainEvent::OpenFailed { model: id("late"), failure: OpenFailure::ConnectionLost };
    assert!(drain(&mut engine, at(60)).events.contains(&Event::Domain(failed)));
    // Offline, only the store can open.
    let error = engine.open_at_server(id("late"), None).unwrap_err();
    assert_eq!(error, concord_sync::EngineError::Offline(id("late")));
    Ok(())
}

#[test]
fn opening_with_auto_create_answers_the_servers_request_with_the_data() -> Result<()> {
    let mut engine = connected(config(), at(0), &[])?;
    let model = id("fresh");
    let data = snapshot()?.data;
    engine.open_at_server(model.clone(), Some((notes(), data.clone())))?;
    let turn = drain(&mut engine, at(10));
    let (open, request) = turn.requests().next().expect("an open");
    assert_eq!(*request, ClientRequest::OpenModel { model: model.clone(), auto_create: true });

    // The server has no such model and asks for its content.
    let ask = ServerRequest::AutoCreate { model: model.clone() };
    engine.handle_message(at(20), ServerMessage::Request { id: RequestId(900), request: ask });
    let turn = drain(&mut engine, at(20));
    let expected = ClientMessage::Response {
        to: RequestId(900),
        response: ClientResponse::AutoCreate { collection: notes(), data, permissions: None },
    };
    assert_eq!(turn.sent, vec![expected]);
    let opened = OpenedModel {
        model: model.clone(),
        snapshot: snapshot()?,
        permissions: Permissions::ALL,
        collaborators: vec![],
        references: vec![],
    };
    let reply = ServerResponse::ModelOpened(opened);
    engine.handle_message(at(30), ServerMessage::Response { to: open, response: reply });
    let turn = drain(&mut engine, at(30));
    assert!(turn.events.contains(&Event::Domain(DomainEvent::Opened { model })));

    // Without data to give, the engine tells the server so.
    engine.open_at_server(id("nothing"), None)?;
    drain(&mut engine, at(40));
    let ask = ServerRequest::AutoCreate { model: id("nothing") };
    engine.handle_message(at(50), ServerMessage::Request { id: RequestId(901), request: ask });
    let turn = drain(&mut engine, at(50));
    let [ClientMessage::Error { to: Some(RequestId(901)), error }] = &turn.sent[..] else {
        bail!("an error answer, got {:?}", turn.sent)
    };
    assert_eq!(error.code, ErrorCode::MODEL_NOT_FOUND);
    Ok(())
}

#[test]
fn the_servers_ping_is_answered_and_counts_as_hearing_from_it() -> Result<()> {
    let config = EngineConfig { request_timeout: Duration::from_secs(3600), ..config() };
    let mut engine = connected(config, at(0), &[])?;
    let ping = ServerMessage::Request { id: RequestId(42), request: ServerRequest::Ping };
    engine.handle_message(at(2_500), ping);
    let turn = drain(&mut engine, at(2_500));
    let pong = ClientMessage::Response { to: RequestId(42), response: ClientResponse::Pong };
    assert_eq!(turn.sent, vec![pong]);
    // Heard at 2.5 s: not silent at 3 s (its own pings unanswered), silent at 5.5 s.
    engine.handle_timeout(at(3_000));
    assert!(drain(&mut engine, at(3_000)).actions.is_empty());
    engine.handle_timeout(at(5_500));
    let reason = DisconnectReason::ServerSilent;
    assert_eq!(drain(&mut engine, at(5_500)).actions, vec![Action::Disconnect { reason }]);
    Ok(())
}

fn store_with(model: &ModelId, snapshot: &ModelSnapshot) -> Result<MemoryStore> {
    let store = MemoryAdapter::new().open_store(&StoreKey::new("test", "alice"))?;
    let batch = Batch {
        mutations: vec![
            Mutation::SetReplicaId(REPLICA),
            Mutation::PutModel(ModelRecord::new(model.clone(), snapshot.collection.clone())),
            Mutation::PutSnapshot { model: model.clone(), snapshot: store::to_stored(snapshot) },
        ],
    };
    block_on(store.commit(batch))?;
    Ok(store)
}

/// Inserts `{"a": 1}` at the end of the model's list; returns the ids it minted.
fn insert_object(engine: &mut ClientEngine, model: &ModelId) -> Result<Vec<ElementId>> {
    let mut minted = Vec::new();
    engine.local_edit(model, |document, ids| {
        let list = document.element_at(&[PathSegment::Key("list".into())]).expect("list");
        let index = document.array_len(list).expect("an array");
        let first = ids.next_counter();
        let value = Value::from_json(&json!({"a": 1}), ids)?;
        minted = (first..ids.next_counter())
            .map(|counter| ElementId { replica: REPLICA, counter })
            .collect();
        let insert = OperationKind::ArrayInsert { index, value };
        Ok::<_, anyhow::Error>(DiscreteOperation::new(list, insert).into())
    })?;
    Ok(minted)
}

#[test]
fn element_ids_continue_across_a_restore_from_the_store() -> Result<()> {
    let model = id("m");
    let snapshot = snapshot()?;
    let store = store_with(&model, &snapshot)?;
    let mut engine = ClientEngine::new(REPLICA, config());
    let restored = store::restore(block_on(store.load_model(&model))?.expect("stored"))?;
    engine.add_model(model.clone(), restored)?;

    let first = insert_object(&mut engine, &model)?;
    assert_eq!(first.iter().map(|id| id.counter).collect::<Vec<_>>(), vec![0, 1]);
    let turn = drain(&mut engine, at(0));
    let [batch] = &turn.batches[..] else { bail!("one batch, got {:?}", turn.batches) };
    assert!(matches!(
        batch.changes[..],
        [StoreChange::AppendPending(_), StoreChange::AdvanceElementCounter(2)]
    ));
    block_on(store.commit(Batch { mutations: store::batch_mutations(batch.clone()) }))?;

    // A new engine on the same store (a restart) goes on from there.
    let mut restarted = ClientEngine::new(REPLICA, config());
    let restored = store::restore(block_on(store.load_model(&model))?.expect("stored"))?;
    assert_eq!(restored.next_element_counter, 2);
    restarted.add_model(model.clone(), restored)?;
    let next = insert_object(&mut restarted, &model)?;
    assert_eq!(next.iter().map(|id| id.counter).collect::<Vec<_>>(), vec![2, 3]);
    let document = restarted.model(&model).expect("loaded").local();
    for id in first.iter().chain(&next) {
        assert!(document.kind(*id).is_some(), "{id:?} is in the model once");
    }

    // A document holding ids this replica minted past the stored counter (stored anew
    // under a counter of 0) never gets them minted again.
    let mut ids = IdGenerator::new(REPLICA, 40);
    let data = Document::new(Value::from_json(&json!({"n": 1, "list": []}), &mut ids)?)?;
    let ahead = ModelSnapshot { data, ..snapshot };
    let mut engine = ClientEngine::new(REPLICA, config());
    engine.add_model(model.clone(), ModelReplica::new(ahead).into())?;
    let minted = insert_object(&mut engine, &model)?;
    assert_eq!(minted[0].counter, 43);
    Ok(())
}

/// Connects and syncs `stored` (released from memory, with changes) in the background
/// against the test server; returns everything that happened.
fn sync_in_background(
    engine: &mut ClientEngine,
    model: &ModelId,
    stored: store::Restored,
) -> Result<Turn> {
    let mut turn = connect_listing(engine, vec![model.clone()]);
    assert_eq!(engine.poll_load(), Some(model.clone()));
    engine.handle_loaded(model.clone(), Some(stored));
    let loaded = drain(engine, at(0));
    turn.sent.extend(loaded.sent);
    turn.events.extend(loaded.events);
    settle(engine, at(0), turn)
}

fn last_progress(turn: &Turn) -> Option<(usize, usize, usize)> {
    turn.events
        .iter()
        .filter_map(|e| match e {
            Event::Domain(DomainEvent::SyncProgress { done, failed, total }) => {
                Some((*done, *failed, *total))
            }
            _ => None,
        })
        .next_back()
}

#[test]
fn a_model_synced_in_the_background_costs_one_sync_request() -> Result<()> {
    let model = id("m");
    // Offline: a change stored, then the model released from memory.
    let mut engine = ClientEngine::new(REPLICA, config());
    engine.add_model(model.clone(), ModelReplica::new(snapshot()?).into())?;
    insert_object(&mut engine, &model)?;
    drain(&mut engine, at(0));
    let replica = engine.remove_model(&model).expect("loaded");
    assert!(replica.has_unacknowledged());

    let all = sync_in_background(&mut engine, &model, replica.into())?;
    let [ClientMessage::Request { request: ClientRequest::Sync { create, submission, .. }, .. }] =
        all.sent.as_slice()
    else {
        bail!("one sync request and nothing else: {:?}", all.sent);
    };
    assert!(create.is_none(), "the server has the model already");
    let submission = submission.as_ref().expect("the stored change goes with it");
    assert_eq!((submission.replica, submission.first_seq, submission.seq), (REPLICA, 1, 1));
    assert_eq!(last_progress(&all), Some((1, 0, 1)), "done once acknowledged");
    assert!(engine.model(&model).is_none(), "released once in sync");
    assert!(engine.sync_idle());
    Ok(())
}

#[test]
fn a_model_created_offline_is_created_resynced_and_submitted_by_one_sync_request() -> Result<()> {
    let model = id("new");
    let mut engine = ClientEngine::new(REPLICA, config());
    let nonce = CreationNonce([9; 16]);
    // Restored as a model whose creation the server has not confirmed.
    let restored = created_offline(&mut engine, &model, nonce, true)?;
    let all = sync_in_background(&mut engine, &model, restored)?;

    let [ClientMessage::Request { request: ClientRequest::Sync { create, submission, .. }, .. }] =
        all.sent.as_slice()
    else {
        bail!("one sync request and nothing else: {:?}", all.sent);
    };
    let create = create.as_ref().expect("the creation goes with it");
    assert_eq!((create.nonce, &create.collection), (nonce, &notes()));
    assert!(submission.is_some());
    assert!(
        all.events
            .iter()
            .any(|e| matches!(e, Event::Domain(DomainEvent::Created { model: m }) if *m == model)),
        "the creation is confirmed"
    );
    let confirmed = all
        .batches
        .iter()
        .any(|b| b.changes.iter().any(|c| matches!(c, StoreChange::CreationConfirmed { .. })));
    assert!(confirmed, "and stored as confirmed");
    assert_eq!(stored_creation_time(&all), Some((SERVER_CREATED, SERVER_CREATED)));
    assert_eq!(last_progress(&all), Some((1, 0, 1)));
    assert!(engine.model(&model).is_none(), "released once in sync");
    Ok(())
}

/// Commits every batch of `turn` to `store`, as the driver does.
fn store_turn(store: &MemoryStore, turn: &Turn) -> Result<()> {
    for batch in &turn.batches {
        let mutations = store::batch_mutations(batch.clone());
        block_on(store.commit(Batch { mutations }))?;
    }
    Ok(())
}

/// The creation and modification times of the last snapshot `turn` stored.
fn stored_creation_time(turn: &Turn) -> Option<(Timestamp, Timestamp)> {
    let mut snapshots = turn.batches.iter().flat_map(|b| &b.changes).filter_map(|c| match c {
        StoreChange::PutSnapshot(snapshot) => Some((snapshot.created_at, snapshot.modified_at)),
        _ => None,
    });
    snapshots.next_back()
}

/// A model created offline keeps the client's clock only until the server confirms it:
/// then its creation time (and, at version 0, its modification time) is the server's, in
/// memory and in the store, so that offline queries and `info` agree with the server's.
#[test]
fn a_confirmed_creation_takes_the_servers_creation_time() -> Result<()> {
    let model = id("new");
    let store = MemoryAdapter::new().open_store(&StoreKey::new("test", "alice"))?;
    let commit = |turn: &Turn| store_turn(&store, turn);
    let mut engine = ClientEngine::new(REPLICA, config());
    let local = Timestamp(5);
    engine.create_model(model.clone(), notes(), snapshot()?.data, CreationNonce([3; 16]), local)?;
    commit(&drain(&mut engine, at(0)))?;
    let confirmed = engine.model(&model).expect("loaded").confirmed();
    assert_eq!((confirmed.created_at, confirmed.modified_at), (local, local));

    engine.connect(credentials());
    engine.poll_action();
    engine.handle_connected(at(0), &session(), vec![], vec![]);
    let turn = drain(&mut engine, at(0));
    let turn = settle(&mut engine, at(0), turn)?;
    commit(&turn)?;
    assert_eq!(stored_creation_time(&turn), Some((SERVER_CREATED, SERVER_CREATED)));
    let confirmed = engine.model(&model).expect("loaded").confirmed();
    assert_eq!((confirmed.created_at, confirmed.modified_at), (SERVER_CREATED, SERVER_CREATED));
    let state = block_on(store.load_model(&model))?.expect("stored");
    let restored = store::restore(state)?;
    let stored = restored.replica.confirmed();
    assert_eq!((stored.created_at, stored.modified_at), (SERVER_CREATED, SERVER_CREATED));
    assert!(restored.creation.is_none(), "confirmed");
    Ok(())
}

/// The id of the first request in `sent` that `check` accepts.
fn request_id(sent: &[ClientMessage], check: impl Fn(&ClientRequest) -> bool) -> Result<RequestId> {
    sent.iter()
        .find_map(|m| match m {
            ClientMessage::Request { id, request } if check(request) => Some(*id),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("no such request in {sent:?}"))
}

#[test]
fn calls_are_never_queued_and_presence_and_activities_come_back_after_a_reconnection() -> Result<()>
{
    use concord_protocol::{
        ActivityChange, ActivityId, ActivityRequest, Participant, PresenceRequest, UserPresence,
    };
    use concord_sync::CallError;

    let status = std::collections::BTreeMap::from([("status".to_owned(), "\"away\"".to_owned())]);
    let page = ActivityId { kind: "viewing".into(), id: "page 12".into() };
    let participant = |session: &str, user: &str| Participant {
        session: SessionId(session.into()),
        user: UserId(user.into()),
        state: Default::default(),
    };
    let mut engine = ClientEngine::new(REPLICA, config());

    // Offline: a call fails at once and nothing is queued; presence state is kept.
    assert_eq!(engine.call(ClientRequest::Ping), Err(CallError::Offline));
    assert_eq!(engine.set_presence_state(status.clone()), None);
    engine.connect(credentials());
    assert_eq!(engine.poll_action(), Some(Action::Connect { auth: credentials() }));
    engine.handle_connected(at(0), &session(), vec![], vec![]);
    let sent = drain(&mut engine, at(0)).sent;
    let publish = |r: &ClientRequest| matches!(r, ClientRequest::Presence(PresenceRequest::SetState { state }) if *state == status);
    request_id(&sent, publish)?;
    assert!(!sent.iter().any(|m| request_is(m, |r| matches!(r, ClientRequest::Ping))));

    // Follow and join; each call gets its answer once.
    let follow = engine.follow_presence(vec![UserId("bob".into())]).expect("connected");
    let join = engine.join_activity(page.clone(), Default::default()).expect("connected");
    let sent = drain(&mut engine, at(1)).sent;
    let bob = UserPresence { user: UserId("bob".into()), available: true, state: status.clone() };
    let joined = vec![participant("s1", "alice"), participant("s9", "bob")];
    let answers = [
        (
            request_id(&sent, |r| matches!(r, ClientRequest::Presence(_)))?,
            ServerResponse::Presence(vec![bob.clone()]),
        ),
        (
            request_id(&sent, |r| matches!(r, ClientRequest::Activity(_)))?,
            ServerResponse::ActivityJoined { activity: page.clone(), participants: joined },
        ),
    ];
    for (to, response) in answers {
        engine.handle_message(at(2), ServerMessage::Response { to, response });
    }
    let got: Vec<_> = std::iter::from_fn(|| engine.poll_answer()).collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], (follow, Ok(ServerResponse::Presence(vec![bob.clone()]))));
    assert_eq!(got[1].0, join);
    assert_eq!(engine.presence_of(&UserId("bob".into())), Some(&bob));
    assert_eq!(engine.participants(&page).map(|p| p.len()), Some(2));

    // A call the connection's end leaves unanswered is answered `ConnectionLost`.
    let ping = engine.call(ClientRequest::Ping).expect("connected");
    drain(&mut engine, at(3));
    engine.disconnect();
    assert_eq!(engine.poll_answer(), Some((ping, Err(CallError::ConnectionLost))));
    assert_eq!(engine.poll_answer(), None);
    let disconnect = Action::Disconnect { reason: DisconnectReason::Requested };
    assert_eq!(drain(&mut engine, at(4)).actions, vec![disconnect]);

    // A new session: the state is published, bob followed and the page joined again, and
    // what changed meanwhile is told.
    engine.connect(credentials());
    assert_eq!(engine.poll_action(), Some(Action::Connect { auth: credentials() }));
    let second = Session { session: SessionId("s2".into()), ..session() };
    engine.handle_connected(at(10), &second, vec![], vec![]);
    let turn = drain(&mut engine, at(10));
    request_id(&turn.sent, publish)?;
    let refollow = request_id(
        &turn.sent,
        |r| matches!(r, ClientRequest::Presence(PresenceRequest::Subscribe { users }) if users.len() == 1),
    )?;
    let rejoin = request_id(
        &turn.sent,
        |r| matches!(r, ClientRequest::Activity(ActivityRequest::Join { activity, .. }) if *activity == page),
    )?;
    let gone =
        UserPresence { user: UserId("bob".into()), available: false, state: Default::default() };
    let now_there = vec![participant("s2", "alice"), participant("s7", "carol")];
    let replies = [
        (refollow, ServerResponse::Presence(vec![gone.clone()])),
        (
            rejoin,
            ServerResponse::ActivityJoined { activity: page.clone(), participants: now_there },
        ),
    ];
    for (to, response) in replies {
        engine.handle_message(at(11), ServerMessage::Response { to, response });
    }
    let events = drain(&mut engine, at(11)).events;
    assert!(events.contains(&Event::Presence(gone)), "{events:?}");
    let change = |change| Event::Activity { activity: page.clone(), change };
    for expected in [
        change(ActivityChange::Left {
            session: SessionId("s9".into()),
            user: UserId("bob".into()),
        }),
        change(ActivityChange::Joined(participant("s7", "carol"))),
    ] {
        assert!(events.contains(&expected), "{expected:?} missing from {events:?}");
    }
    assert_eq!(engine.poll_answer(), None, "rejoins are the engine's own, not calls");

    // Removed by a manager: no longer joined, not joined again.
    let removed =
        ActivityChange::Left { session: SessionId("s2".into()), user: UserId("alice".into()) };
    let push = ServerPush::Activity { activity: page.clone(), change: removed };
    engine.handle_message(at(12), ServerMessage::Push(push));
    assert_eq!(engine.participants(&page), None);
    Ok(())
}

#[test]
fn a_rejoin_refused_for_state_the_user_may_not_set_joins_without_it() -> Result<()> {
    use concord_protocol::{ActivityId, ActivityRequest, ErrorCode, ErrorReply, Participant};

    let page = ActivityId { kind: "editing".into(), id: "form".into() };
    let cursor = std::collections::BTreeMap::from([("cursor".to_owned(), "4".to_owned())]);
    let me = |session: &str| Participant {
        session: SessionId(session.into()),
        user: UserId("alice".into()),
        state: Default::default(),
    };
    let denied = || ErrorReply::new(ErrorCode::PERMISSION_DENIED, "needs `set_state`");
    let joins = |sent: &[ClientMessage]| -> Vec<(RequestId, usize)> {
        sent.iter()
            .filter_map(|m| match m {
                ClientMessage::Request {
                    id,
                    request: ClientRequest::Activity(ActivityRequest::Join { state, .. }),
                } => Some((*id, state.len())),
                _ => None,
            })
            .collect()
    };
    let mut engine = ClientEngine::new(REPLICA, config());
    engine.connect(credentials());
    assert_eq!(engine.poll_action(), Some(Action::Connect { auth: credentials() }));
    engine.handle_connected(at(0), &session(), vec![], vec![]);
    engine.join_activity(page.clone(), Default::default()).expect("connected");
    let [(to, 0)] = joins(&drain(&mut engine, at(1)).sent)[..] else { panic!("one join") };
    let response =
        ServerResponse::ActivityJoined { activity: page.clone(), participants: vec![me("s1")] };
    engine.handle_message(at(2), ServerMessage::Response { to, response });
    // The server refuses the state (a join-only user), yet it is kept for the rejoin.
    let set = engine.set_activity_state(page.clone(), cursor).expect("connected");
    let to = request_id(&drain(&mut engine, at(3)).sent, |r| {
        matches!(r, ClientRequest::Activity(ActivityRequest::SetState { .. }))
    })?;
    engine.handle_message(at(4), ServerMessage::Error { to: Some(to), error: denied() });
    assert!(std::iter::from_fn(|| engine.poll_answer()).any(|(call, a)| call == set && a.is_err()));

    engine.disconnect();
    drain(&mut engine, at(5));
    engine.connect(credentials());
    assert_eq!(engine.poll_action(), Some(Action::Connect { auth: credentials() }));
    let second = Session { session: SessionId("s2".into()), ..session() };
    engine.handle_connected(at(10), &second, vec![], vec![]);
    let [(to, 1)] = joins(&drain(&mut engine, at(10)).sent)[..] else { panic!("a rejoin") };
    engine.handle_message(at(11), ServerMessage::Error { to: Some(to), error: denied() });
    let turn = drain(&mut engine, at(11));
    let [(to, 0)] = joins(&turn.sent)[..] else { panic!("a rejoin without the state") };
    assert!(!turn.events.iter().any(|e| matches!(e, Event::Activity { .. })), "{:?}", turn.events);
    let response =
        ServerResponse::ActivityJoined { activity: page.clone(), participants: vec![me("s2")] };
    engine.handle_message(at(12), ServerMessage::Response { to, response });
    assert_eq!(engine.participants(&page), Some(vec![me("s2")]), "still joined");
    Ok(())
}

/// `{"text": "hello world"}`, made by another replica.
fn text_snapshot() -> Result<(ModelSnapshot, ElementId)> {
    let mut ids = IdGenerator::new(ReplicaId(0), 0);
    let data = Document::new(Value::from_json(&json!({"text": "hello world"}), &mut ids)?)?;
    let text = data.element_at(&[PathSegment::Key("text".into())]).expect("text");
    Ok((ModelSnapshot { data, ..snapshot()? }, text))
}

fn splice(text: ElementId, index: usize, insert: &str) -> concord_ot::Operation {
    let kind = OperationKind::StringSplice { index, delete_count: 0, insert: insert.into() };
    DiscreteOperation::new(text, kind).into()
}

/// The reference changes among `sent`.
fn reference_changes(sent: &[ClientMessage]) -> Vec<concord_protocol::ReferenceChange> {
    sent.iter()
        .filter_map(|m| match m {
            ClientMessage::Notice(ClientNotice::Reference { change, .. }) => Some(change.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn references_move_through_changes_in_flight_pending_and_remote() -> Result<()> {
    use concord_ot::ReferenceValue::Index;
    use concord_protocol::{CommittedOperation, ReferenceChange, ReferenceKey};
    let (snapshot, text) = text_snapshot()?;
    let model = id("doc");
    let mut engine = ClientEngine::new(REPLICA, config());
    engine.add_model(model.clone(), ModelReplica::new(snapshot).into())?;
    engine.connect(credentials());
    engine.poll_action();
    engine.handle_connected(at(0), &session(), vec![], vec![]);
    let turn = drain(&mut engine, at(0));
    settle(&mut engine, at(0), turn)?;
    assert!(engine.shares_references(&model));
    let key = ReferenceKey { element: Some(text), key: "cursor".into() };
    let bob = SessionId("bob".into());
    let local_char = |engine: &ClientEngine, index: usize| {
        engine.model(&model).and_then(|r| r.local().text(text)).and_then(|t| t.chars().nth(index))
    };
    let seen = |engine: &ClientEngine| match engine.reference(&model, &bob, &key) {
        Some(Some(Index(at))) => at[0],
        other => panic!("bob's cursor: {other:?}"),
    };

    // Bob's cursor on the "w" of "world", at version 0.
    let set = ReferenceChange::Set { reference: key.clone(), value: Index(vec![6]), version: 0 };
    let push =
        ServerPush::RemoteReference { model: model.clone(), session: bob.clone(), change: set };
    engine.handle_message(at(1), ServerMessage::Push(push));
    assert_eq!(seen(&engine), 6);

    // A change in flight (sent, not answered) and one pending: still on the "w".
    engine.local_change(&model, splice(text, 0, "big "))?;
    let turn = drain(&mut engine, at(2));
    assert!(
        turn.sent.iter().any(|m| matches!(m, ClientMessage::Notice(ClientNotice::Submit { .. })))
    );
    engine.local_change(&model, splice(text, 0, "X"))?;
    drain(&mut engine, at(2));
    assert_eq!((seen(&engine), local_char(&engine, seen(&engine))), (11, Some('w')));

    // This client's cursor at the end of "big " is sent at the confirmed version (moved back
    // through its changes); it is marked to be sent again once they are committed.
    engine.set_reference(&model, key.clone(), Some(Index(vec![5])))?;
    let turn = drain(&mut engine, at(3));
    let expected = vec![
        ReferenceChange::Share { reference: key.clone(), value: None },
        ReferenceChange::Set { reference: key.clone(), value: Index(vec![0]), version: 0 },
    ];
    assert_eq!(reference_changes(&turn.sent), expected);

    // Another session types in front, concurrently: both cursors stay on their characters.
    let remote = CommittedOperation {
        version: 1,
        author: bob.clone(),
        timestamp: Timestamp(1),
        operation: splice(text, 0, "Y"),
    };
    let push = ServerPush::RemoteOperation { model: model.clone(), operation: remote };
    engine.handle_message(at(4), ServerMessage::Push(push));
    drain(&mut engine, at(4));
    let local = engine.model(&model).and_then(|r| r.local().text(text)).expect("text");
    assert_eq!(local_char(&engine, seen(&engine)), Some('w'), "{local}");
    let own = engine.own_references(&model);
    let Some(Index(own_at)) = own[0].1.clone() else { panic!("own cursor: {own:?}") };
    // It stays right after "big ".
    let before: String = local.chars().take(own_at[0]).collect();
    assert!(before.ends_with("big "), "{local}: own cursor at {}", own_at[0]);

    // The in-flight change and then the pending one are acknowledged: once nothing is
    // uncommitted, the own cursor is sent again, exact, at the confirmed version.
    let ack = ServerPush::Ack { model: model.clone(), seq: 1, version: 2, timestamp: Timestamp(2) };
    engine.handle_message(at(5), ServerMessage::Push(ack));
    let turn = drain(&mut engine, at(5));
    assert!(reference_changes(&turn.sent).is_empty(), "X is still pending");
    let ack = ServerPush::Ack { model: model.clone(), seq: 2, version: 3, timestamp: Timestamp(3) };
    engine.handle_message(at(6), ServerMessage::Push(ack));
    let turn = drain(&mut engine, at(6));
    let exact = ReferenceChange::Set { reference: key.clone(), value: Index(own_at), version: 3 };
    assert_eq!(reference_changes(&turn.sent), vec![exact]);
    assert_eq!(local_char(&engine, seen(&engine)), Some('w'));
    Ok(())
}

/// [`settle`], with `refuse` answering in place of the test server what it returns
/// `Some` for.
fn settle_refusing(
    engine: &mut ClientEngine,
    now: Time,
    mut turn: Turn,
    refuse: impl Fn(&ClientMessage) -> Option<Vec<ServerMessage>>,
) -> Result<Turn> {
    let mut all = Turn::default();
    for _ in 0..100 {
        let sent = std::mem::take(&mut turn.sent);
        all.batches.append(&mut turn.batches);
        all.events.append(&mut turn.events);
        all.actions.append(&mut turn.actions);
        if sent.is_empty() {
            return Ok(all);
        }
        for message in &sent {
            for reply in refuse(message).map_or_else(|| answer(message), Ok)? {
                engine.handle_message(now, reply);
            }
        }
        all.sent.extend(sent);
        turn = drain(engine, now);
    }
    bail!("the engine kept sending")
}

/// The server's refusal, with `code`, of a request the engine sent about `model`.
fn refusal(
    message: &ClientMessage,
    model: &ModelId,
    code: ErrorCode,
) -> Option<Vec<ServerMessage>> {
    let ClientMessage::Request { id, request } = message else { return None };
    let about = match request {
        ClientRequest::Sync { model: m, .. } | ClientRequest::Resync { model: m, .. } => m,
        _ => return None,
    };
    let error = ErrorReply::new(code, "refused by the test");
    (about == model).then(|| vec![ServerMessage::Error { to: Some(*id), error }])
}

/// Each of `models` changed offline (one object inserted) and released: what the store
/// holds of each, owing the server that change.
fn changed_offline(engine: &mut ClientEngine, models: &[&ModelId]) -> Result<Vec<ModelReplica>> {
    let mut stored = Vec::new();
    for model in models {
        engine.add_model((*model).clone(), ModelReplica::new(snapshot()?).into())?;
        insert_object(engine, model)?;
        drain(engine, at(0));
        stored.push(engine.remove_model(model).expect("loaded"));
    }
    Ok(stored)
}

/// `model` created offline (with `changed`, one object inserted too) and released: what the
/// store holds, owing the server the creation.
fn created_offline(
    engine: &mut ClientEngine,
    model: &ModelId,
    nonce: CreationNonce,
    changed: bool,
) -> Result<store::Restored> {
    engine.create_model(model.clone(), notes(), snapshot()?.data, nonce, Timestamp(0))?;
    if changed {
        insert_object(engine, model)?;
    }
    drain(engine, at(0));
    let mut restored: store::Restored = engine.remove_model(model).expect("loaded").into();
    restored.creation = Some(nonce);
    Ok(restored)
}

/// An engine whose background sync takes one model at a time.
fn one_at_a_time() -> ClientEngine {
    ClientEngine::new(REPLICA, EngineConfig { sync_concurrency: 1, ..config() })
}

/// No refusal: the test server answers everything (for [`load_and_settle`]).
fn none(_: &ClientMessage) -> Option<Vec<ServerMessage>> {
    None
}

/// Answers the load of `model` with `restored` and settles what follows, `refuse`
/// answering in place of the test server what it returns `Some` for.
fn load_and_settle(
    engine: &mut ClientEngine,
    model: &ModelId,
    restored: store::Restored,
    refuse: impl Fn(&ClientMessage) -> Option<Vec<ServerMessage>>,
) -> Result<Turn> {
    engine.handle_loaded(model.clone(), Some(restored));
    let turn = drain(engine, at(0));
    settle_refusing(engine, at(0), turn, refuse)
}

/// The second of two models listed comes to its turn after the first synced, held by the
/// application, offline, refused by the server: nothing is asked of the server, it counts
/// as failed, and background sync is over.
fn its_turn_counts_as_failed(
    engine: &mut ClientEngine,
    model: &ModelId,
    restored: store::Restored,
) -> Result<()> {
    assert_eq!(engine.poll_load(), Some(model.clone()));
    engine.handle_loaded(model.clone(), Some(restored));
    let after = drain(engine, at(0));
    assert!(after.sent.is_empty(), "nothing more is asked of the server: {:?}", after.sent);
    assert_eq!(last_progress(&after), Some((1, 1, 2)), "counted as failed");
    assert!(engine.sync_idle());
    Ok(())
}

/// Two models synced in the background: no report counts more than the total, and the
/// last has each done once.
fn assert_each_counted_once(all: &Turn) {
    for event in &all.events {
        if let Event::Domain(DomainEvent::SyncProgress { done, failed, total }) = event {
            assert!(done + failed <= *total, "{event:?} in {:?}", all.events);
        }
    }
    assert_eq!(last_progress(all), Some((2, 0, 2)), "each done once");
}

/// Connects, the store listing `stored` as holding changes for the server; returns the
/// connection's first turn.
fn connect_listing(engine: &mut ClientEngine, stored: Vec<ModelId>) -> Turn {
    engine.connect(credentials());
    assert_eq!(engine.poll_action(), Some(Action::Connect { auth: credentials() }));
    engine.handle_connected(at(0), &session(), stored, vec![]);
    drain(engine, at(0))
}

#[test]
fn a_creation_refused_after_the_application_took_the_model_over_ends_its_background_sync()
-> Result<()> {
    // Created offline with a change, then released: the store owes the server both.
    let model = id("taken");
    let mut engine = ClientEngine::new(REPLICA, config());
    let restored = created_offline(&mut engine, &model, CreationNonce([7; 16]), true)?;

    // Loaded for background sync, its `Sync` (creating it) goes out; the application then
    // opens it, and the server answers that another creation has the id.
    let mut turn = connect_listing(&mut engine, vec![model.clone()]);
    assert_eq!(engine.poll_load(), Some(model.clone()));
    engine.handle_loaded(model.clone(), Some(restored));
    engine.keep_loaded(&model);
    let loaded = drain(&mut engine, at(0));
    turn.sent.extend(loaded.sent);
    turn.events.extend(loaded.events);
    let all = settle_refusing(&mut engine, at(0), turn, |message| {
        refusal(message, &model, ErrorCode::MODEL_ALREADY_EXISTS)
    })?;

    let refused = |e: &Event| matches!(e, Event::Domain(DomainEvent::CreationRefused { .. }));
    assert!(all.events.iter().any(refused), "{:?}", all.events);
    assert_eq!(last_progress(&all), Some((0, 1, 1)), "counted as failed");
    assert!(engine.model(&model).is_some(), "the application's model stays, offline");
    // It holds no slot at the server: background sync is over, nothing is left waiting.
    assert!(engine.sync_idle());
    Ok(())
}

#[test]
fn a_background_load_of_a_model_the_server_refused_meanwhile_counts_as_failed() -> Result<()> {
    // Two models changed offline and released: background sync, one model at a time, owes
    // the server both changes.
    let mut engine = one_at_a_time();
    let (first, model) = (id("first"), id("gone"));
    let stored = changed_offline(&mut engine, &[&first, &model])?;
    let [first_stored, stored] = <[ModelReplica; 2]>::try_from(stored).expect("two");

    // Both listed at the connection; while the first syncs, the application opens the
    // second, and the server says it no longer has it.
    let mut turn = connect_listing(&mut engine, vec![first.clone(), model.clone()]);
    assert_eq!(engine.poll_load(), Some(first.clone()));
    assert_eq!(engine.poll_load(), None, "one at a time");
    engine.add_model(model.clone(), stored.clone().into())?;
    turn.sent.extend(drain(&mut engine, at(0)).sent);
    let refuse = |message: &ClientMessage| refusal(message, &model, ErrorCode::MODEL_NOT_FOUND);
    let all = settle_refusing(&mut engine, at(0), turn, refuse)?;
    let gone = |e: &Event| matches!(e, Event::Domain(DomainEvent::ModelGone { .. }));
    assert!(all.events.iter().any(gone), "{:?}", all.events);

    // The first syncs; then the second's turn comes, for a model the application holds,
    // offline, refused by the server: it cannot sync on this connection.
    let synced = load_and_settle(&mut engine, &first, first_stored.into(), refuse)?;
    assert_eq!(last_progress(&synced), Some((1, 0, 2)));
    its_turn_counts_as_failed(&mut engine, &model, stored.into())
}

#[test]
fn a_background_load_of_a_creation_the_server_refused_meanwhile_counts_as_failed() -> Result<()> {
    // A model changed offline and one created offline, both released: background sync,
    // one model at a time, owes the server the change and the creation.
    let mut engine = one_at_a_time();
    let (first, model) = (id("first"), id("taken"));
    let [first_stored] =
        <[ModelReplica; 1]>::try_from(changed_offline(&mut engine, &[&first])?).expect("one");
    let restored = created_offline(&mut engine, &model, CreationNonce([9; 16]), false)?;

    // Both listed at the connection; while the first syncs, the application opens the
    // second, and the server refuses its creation: another creation has the id.
    let mut turn = connect_listing(&mut engine, vec![first.clone(), model.clone()]);
    assert_eq!(engine.poll_load(), Some(first.clone()));
    engine.add_model(model.clone(), restored.clone())?;
    turn.sent.extend(drain(&mut engine, at(0)).sent);
    let refuse = |message: &ClientMessage| match message {
        ClientMessage::Request { id, request: ClientRequest::CreateModel { .. } } => {
            let error = ErrorReply::new(ErrorCode::MODEL_ALREADY_EXISTS, "the id is taken");
            Some(vec![ServerMessage::Error { to: Some(*id), error }])
        }
        _ => None,
    };
    let all = settle_refusing(&mut engine, at(0), turn, refuse)?;
    let refused = |e: &Event| matches!(e, Event::Domain(DomainEvent::CreationRefused { .. }));
    assert!(all.events.iter().any(refused), "{:?}", all.events);

    // The first syncs; then the second's turn comes, for a model the application holds,
    // offline, its creation refused: it cannot sync on this connection.
    let synced = load_and_settle(&mut engine, &first, first_stored.into(), refuse)?;
    assert_eq!(last_progress(&synced), Some((1, 0, 2)));
    its_turn_counts_as_failed(&mut engine, &model, restored)
}

#[test]
fn a_model_closed_and_opened_again_during_its_background_sync_counts_once() -> Result<()> {
    // Two models changed offline and released: background sync, one model at a time, owes
    // the server both changes.
    let mut engine = one_at_a_time();
    let (model, other) = (id("m"), id("other"));
    let stored = changed_offline(&mut engine, &[&model, &other])?;
    let [stored, other_stored] = <[ModelReplica; 2]>::try_from(stored).expect("two");

    // The first is loaded for background sync; before its `Sync` is answered the
    // application closes it (its change still owed: it goes back in line, behind the
    // other) and later opens it, and it syncs as the application's model.
    connect_listing(&mut engine, vec![model.clone(), other.clone()]);
    assert_eq!(engine.poll_load(), Some(model.clone()));
    engine.handle_loaded(model.clone(), Some(stored.clone().into()));
    drain(&mut engine, at(0));
    let closed = engine.remove_model(&model).expect("loaded");
    assert_eq!(engine.poll_load(), Some(other.clone()), "the other's turn");
    engine.add_model(model.clone(), closed.into())?;
    let turn = drain(&mut engine, at(0));
    let mut all = settle(&mut engine, at(0), turn)?;
    assert!(engine.is_settled(&model));

    // Then the other syncs, and the first's place in line comes: its load finds the
    // application's copy in sync.
    all.events.extend(load_and_settle(&mut engine, &other, other_stored.into(), none)?.events);
    assert_eq!(engine.poll_load(), Some(model.clone()));
    all.events.extend(load_and_settle(&mut engine, &model, stored.into(), none)?.events);
    assert_each_counted_once(&all);
    assert!(engine.sync_idle());
    Ok(())
}

#[test]
fn a_creation_taken_over_from_background_sync_and_refused_for_load_is_created_without_a_slot()
-> Result<()> {
    // Created offline and released: the store owes the server the creation only.
    let model = id("new");
    let mut engine = ClientEngine::new(REPLICA, config());
    let restored = created_offline(&mut engine, &model, CreationNonce([5; 16]), false)?;

    // Loaded for background sync, its `Sync` (creating it) goes out; the application opens
    // it meanwhile, and the server, at its limit of open models, refuses the `Sync`.
    let mut turn = connect_listing(&mut engine, vec![model.clone()]);
    assert_eq!(engine.poll_load(), Some(model.clone()));
    engine.handle_loaded(model.clone(), Some(restored));
    engine.keep_loaded(&model);
    let loaded = drain(&mut engine, at(0));
    turn.sent.extend(loaded.sent);
    turn.events.extend(loaded.events);
    let sync = request_id(&turn.sent, |r| matches!(r, ClientRequest::Sync { .. }))?;
    let refusal = ErrorReply::new(ErrorCode::OVERLOADED, "at most 3 models may be open");
    engine.handle_message(at(0), ServerMessage::Error { to: Some(sync), error: refusal });

    // Creating opens nothing, so the creation goes out at once, alone.
    let after = drain(&mut engine, at(0));
    let creates = |r: &ClientRequest| matches!(r, ClientRequest::CreateModel { .. });
    assert!(after.requests().any(|(_, r)| creates(r)), "{:?}", after.sent);
    let mut events = turn.events;
    events.extend(settle(&mut engine, at(0), after)?.events);
    let created = |e: &Event| matches!(e, Event::Domain(DomainEvent::Created { .. }));
    assert!(events.iter().any(created), "{events:?}");
    let all = Turn { events, ..Turn::default() };
    assert_eq!(last_progress(&all), Some((1, 0, 1)), "done once created");
    // Once the refusal's backoff has passed, it takes a live slot like any model.
    engine.handle_timeout(at(200));
    let turn = drain(&mut engine, at(200));
    settle(&mut engine, at(200), turn)?;
    assert!(engine.is_settled(&model));
    assert!(engine.sync_idle());
    Ok(())
}

#[test]
fn a_model_taken_over_after_its_background_sync_pushed_everything_is_done_though_parked()
-> Result<()> {
    // Changed offline and released: background sync owes the server the change.
    let model = id("m");
    let mut engine = ClientEngine::new(REPLICA, config());
    let [stored] =
        <[ModelReplica; 1]>::try_from(changed_offline(&mut engine, &[&model])?).expect("one");

    // Loaded for background sync, its `Sync` goes out; the application opens it meanwhile.
    // The server takes the change and closes the model; opened again for the application,
    // it is refused for now: the connection is at the server's limit.
    let mut turn = connect_listing(&mut engine, vec![model.clone()]);
    assert_eq!(engine.poll_load(), Some(model.clone()));
    engine.handle_loaded(model.clone(), Some(stored.into()));
    engine.keep_loaded(&model);
    let loaded = drain(&mut engine, at(0));
    turn.sent.extend(loaded.sent);
    turn.events.extend(loaded.events);
    let all = settle_refusing(&mut engine, at(0), turn, |message| match message {
        ClientMessage::Request { id, request: ClientRequest::Resync { .. } } => {
            let error = ErrorReply::new(ErrorCode::OVERLOADED, "at most 3 models may be open");
            Some(vec![ServerMessage::Error { to: Some(*id), error }])
        }
        _ => None,
    })?;
    let refused = all.requests().any(|(_, r)| matches!(r, ClientRequest::Resync { .. }));
    assert!(refused, "opened again for the application: {:?}", all.sent);
    assert!(!engine.is_settled(&model), "waiting for a live slot");
    assert_eq!(last_progress(&all), Some((1, 0, 1)), "everything pushed: done");
    Ok(())
}

/// A connected engine that has just loaded `model` and sent its resync, not yet answered.
fn resyncing(model: &ModelId) -> Result<(ClientEngine, RequestId)> {
    let mut engine = connected(config(), at(0), &[])?;
    engine.add_model(model.clone(), ModelReplica::new(snapshot()?).into())?;
    let turn = drain(&mut engine, at(0));
    let resync = request_id(&turn.sent, |r| matches!(r, ClientRequest::Resync { .. }))?;
    Ok((engine, resync))
}

#[test]
fn a_resync_answered_after_the_server_closed_the_model_for_good_is_not_a_violation() -> Result<()> {
    let model = id("m");
    let (mut engine, resync) = resyncing(&model)?;

    // Deleted by someone else before the resync is answered; the answer, sent before the
    // server knew, refuses it for load.
    let closed = ServerPush::ModelForceClosed {
        model: model.clone(),
        code: ErrorCode::MODEL_DELETED,
        message: "the model was deleted".into(),
    };
    engine.handle_message(at(0), ServerMessage::Push(closed));
    let error = ErrorReply::new(ErrorCode::OVERLOADED, "at most 3 models may be open");
    engine.handle_message(at(0), ServerMessage::Error { to: Some(resync), error });
    let turn = drain(&mut engine, at(0));
    let gone = |e: &Event| matches!(e, Event::Domain(DomainEvent::ModelGone { .. }));
    let violation = |e: &Event| matches!(e, Event::Domain(DomainEvent::ProtocolViolation { .. }));
    assert!(turn.events.iter().any(gone), "{:?}", turn.events);
    assert!(!turn.events.iter().any(violation), "{:?}", turn.events);
    assert!(engine.model(&model).is_some(), "the application's model stays, offline");
    Ok(())
}

fn server_faults(turn: &Turn, model: &ModelId) -> usize {
    let fault = |e: &&Event| {
        matches!(e, Event::Domain(DomainEvent::ServerFault { model: m, error })
            if m == model && error.code == ErrorCode::INTERNAL)
    };
    turn.events.iter().filter(fault).count()
}

#[test]
fn a_resync_the_server_fails_keeps_the_model_here_offline_and_tries_it_again_after_a_backoff()
-> Result<()> {
    let model = id("m");
    let (mut engine, resync) = resyncing(&model)?;

    // The server cannot load the model (a damaged record of it, say).
    refuse(&mut engine, at(0), resync, ErrorCode::INTERNAL);
    let turn = drain(&mut engine, at(0));
    assert_eq!(server_faults(&turn, &model), 1, "{:?}", turn.events);
    let violation = |e: &Event| matches!(e, Event::Domain(DomainEvent::ProtocolViolation { .. }));
    assert!(!turn.events.iter().any(violation), "{:?}", turn.events);
    assert!(turn.sent.is_empty(), "not asked again at once: {:?}", turn.sent);

    // Still loaded here, and still edited and stored, though not sent.
    assert!(engine.model(&model).is_some(), "the copy here stays");
    insert_object(&mut engine, &model)?;
    let edited = drain(&mut engine, at(1));
    assert!(!edited.batches.is_empty(), "the change is stored");
    assert!(edited.sent.is_empty(), "and not sent: {:?}", edited.sent);

    // Tried again on this connection once `initial_backoff` (100 ms) has passed, not
    // before; failing again, after twice as long.
    let retry = |engine: &mut ClientEngine, now: u64| -> (Vec<RequestId>, Turn) {
        engine.handle_timeout(at(now));
        let turn = drain(engine, at(now));
        let of_model =
            |r: &ClientRequest| matches!(r, ClientRequest::Resync { model: m, .. } if *m == model);
        let ids = turn.requests().filter(|(_, r)| of_model(r)).map(|(id, _)| id).collect();
        (ids, turn)
    };
    assert_eq!(engine.poll_timeout(), Some(at(100)), "a retry is scheduled");
    assert_eq!(retry(&mut engine, 99).0, vec![], "not before the backoff");
    let (again, _) = retry(&mut engine, 100);
    let [again] = <[RequestId; 1]>::try_from(again).expect("one resync");
    refuse(&mut engine, at(100), again, ErrorCode::INTERNAL);
    let turn = drain(&mut engine, at(100));
    assert_eq!(server_faults(&turn, &model), 1, "{:?}", turn.events);
    assert_eq!(retry(&mut engine, 299).0, vec![], "the backoff doubled");

    // The record is repaired meanwhile: the model is live again and its change acknowledged,
    // on the same connection.
    let (third, turn) = retry(&mut engine, 300);
    assert_eq!(third.len(), 1, "one resync: {:?}", turn.sent);
    let all = settle(&mut engine, at(300), turn)?;
    assert_eq!(server_faults(&all, &model), 0);
    assert!(engine.is_settled(&model), "live again, its change acknowledged");
    assert_eq!(engine.connection_state(), ConnectionState::Connected, "on the same connection");
    Ok(())
}

#[test]
fn a_resync_the_server_fails_is_tried_again_on_the_next_connection_without_waiting() -> Result<()> {
    let model = id("m");
    let (mut engine, resync) = resyncing(&model)?;
    refuse(&mut engine, at(0), resync, ErrorCode::INTERNAL);
    drain(&mut engine, at(0));
    insert_object(&mut engine, &model)?;
    drain(&mut engine, at(1));

    // The connection drops before the retry; the next one tries the model at once.
    engine.handle_disconnected(at(10));
    let Some(when) = engine.poll_timeout() else { bail!("no reconnection is scheduled") };
    engine.handle_timeout(when);
    drain(&mut engine, when);
    engine.handle_connected(when, &session(), vec![], vec![]);
    let turn = drain(&mut engine, when);
    request_id(&turn.sent, |r| matches!(r, ClientRequest::Resync { model: m, .. } if *m == model))?;
    let all = settle(&mut engine, when, turn)?;
    assert_eq!(server_faults(&all, &model), 0);
    assert!(engine.is_settled(&model), "live again, its change acknowledged");
    Ok(())
}

#[test]
fn a_background_sync_the_server_fails_counts_as_failed_and_is_tried_again_after_a_backoff()
-> Result<()> {
    // One model changed offline, one created offline: each owes the server a `Sync`.
    let (changed, created) = (id("changed"), id("created"));
    let mut engine = one_at_a_time();
    let [stored] =
        <[ModelReplica; 1]>::try_from(changed_offline(&mut engine, &[&changed])?).expect("one");
    let creation = created_offline(&mut engine, &created, CreationNonce([3; 16]), true)?;

    let mut all = connect_listing(&mut engine, vec![changed.clone(), created.clone()]);
    let fail = |message: &ClientMessage| {
        refusal(message, &changed, ErrorCode::INTERNAL)
            .or_else(|| refusal(message, &created, ErrorCode::INTERNAL))
    };
    let restored: [(&ModelId, store::Restored); 2] =
        [(&changed, stored.into()), (&created, creation)];
    for (model, restored) in restored.clone() {
        assert_eq!(engine.poll_load(), Some(model.clone()));
        let turn = load_and_settle(&mut engine, model, restored, fail)?;
        let synced =
            |r: &ClientRequest| matches!(r, ClientRequest::Sync { model: m, .. } if m == model);
        assert!(turn.requests().any(|(_, r)| synced(r)), "{:?}", turn.sent);
        assert_eq!(server_faults(&turn, model), 1, "{:?}", turn.events);
        assert!(engine.model(model).is_none(), "back to the store");
        all.events.extend(turn.events);
    }
    let refused = |e: &Event| matches!(e, Event::Domain(DomainEvent::CreationRefused { .. }));
    assert!(!all.events.iter().any(refused), "a fault is not a refused creation");
    assert_eq!(last_progress(&all), Some((0, 2, 2)), "both counted as failed");
    assert_eq!(engine.poll_load(), None);
    assert!(!engine.sync_idle(), "a retry is pending");

    // After `initial_backoff` both are loaded again, no longer counted as failed, and this
    // time the server has them.
    engine.handle_timeout(at(99));
    assert_eq!(engine.poll_load(), None, "not before the backoff");
    engine.handle_timeout(at(100));
    let turn = drain(&mut engine, at(100));
    assert_eq!(last_progress(&turn), Some((0, 0, 2)), "{:?}", turn.events);
    let mut all = Turn::default();
    for (model, restored) in restored {
        assert_eq!(engine.poll_load(), Some(model.clone()));
        let turn = load_and_settle(&mut engine, model, restored, none)?;
        assert_eq!(server_faults(&turn, model), 0, "{:?}", turn.events);
        all.events.extend(turn.events);
    }
    assert!(
        all.events
            .iter()
            .any(|e| e == &Event::Domain(DomainEvent::Created { model: created.clone() }))
    );
    assert_eq!(last_progress(&all), Some((2, 0, 2)), "both synced");
    assert!(engine.sync_idle());
    Ok(())
}

#[test]
fn a_model_released_owing_changes_at_a_disconnect_syncs_on_the_next_connection_though_unlisted()
-> Result<()> {
    // Changed offline and released; loaded for background sync, and changed again there
    // (an application may edit any loaded model) just before the connection drops.
    let model = id("m");
    let mut engine = ClientEngine::new(REPLICA, config());
    let [stored] =
        <[ModelReplica; 1]>::try_from(changed_offline(&mut engine, &[&model])?).expect("one");
    connect_listing(&mut engine, vec![model.clone()]);
    assert_eq!(engine.poll_load(), Some(model.clone()));
    engine.handle_loaded(model.clone(), Some(stored.into()));
    drain(&mut engine, at(0));
    insert_object(&mut engine, &model)?;
    engine.handle_disconnected(at(10));
    let turn = drain(&mut engine, at(10));
    let released = Event::Model { model: model.clone(), event: ModelEvent::Released };
    assert!(turn.events.contains(&released), "{:?}", turn.events);

    // The host reads its list of models with changes before that change's batch is durable,
    // so the list lacks the model: it is synced all the same.
    let Some(when) = engine.poll_timeout() else { bail!("no reconnection is scheduled") };
    engine.handle_timeout(when);
    let turn = drain(&mut engine, when);
    assert_eq!(turn.actions, vec![Action::Connect { auth: Auth::Reconnect(token()) }]);
    engine.handle_connected(when, &session(), vec![], vec![]);
    let turn = drain(&mut engine, when);
    assert_eq!(last_progress(&turn), Some((0, 0, 1)));
    assert_eq!(engine.poll_load(), Some(model));
    Ok(())
}

#[test]
fn a_model_closed_offline_owing_changes_syncs_on_the_next_connection_though_unlisted() -> Result<()>
{
    // Changed and closed before any connection; the host's list at the first connection
    // lacks it (its batch not yet durable when the list was read).
    let model = id("m");
    let mut engine = ClientEngine::new(REPLICA, config());
    changed_offline(&mut engine, &[&model])?;
    let turn = connect_listing(&mut engine, vec![]);
    assert_eq!(last_progress(&turn), Some((0, 0, 1)));
    assert_eq!(engine.poll_load(), Some(model));
    Ok(())
}

#[test]
fn a_model_closed_while_its_background_load_is_on_the_way_syncs_and_counts_once() -> Result<()> {
    // Two models changed offline and released: background sync, one model at a time, owes
    // the server both changes.
    let mut engine = one_at_a_time();
    let (model, other) = (id("m"), id("other"));
    let stored = changed_offline(&mut engine, &[&model, &other])?;
    let [stored, other_stored] = <[ModelReplica; 2]>::try_from(stored).expect("two");

    // The first's load is asked for; before it is answered the application opens the model
    // and closes it again, its change still owed. The load's answer then syncs it.
    connect_listing(&mut engine, vec![model.clone(), other.clone()]);
    assert_eq!(engine.poll_load(), Some(model.clone()));
    engine.add_model(model.clone(), stored.clone().into())?;
    drain(&mut engine, at(0));
    let closed = engine.remove_model(&model).expect("loaded");
    let turn = drain(&mut engine, at(0));
    let mut all = settle(&mut engine, at(0), turn)?;
    all.events.extend(load_and_settle(&mut engine, &model, closed.into(), none)?.events);

    // Then the other syncs, and the first is not loaded again.
    assert_eq!(engine.poll_load(), Some(other.clone()));
    all.events.extend(load_and_settle(&mut engine, &other, other_stored.into(), none)?.events);
    assert_eq!(engine.poll_load(), None, "each model loaded once");
    assert_each_counted_once(&all);
    assert!(engine.sync_idle());
    Ok(())
}

#[test]
fn a_submission_the_server_keeps_failing_is_sent_again_after_a_backoff_that_grows() -> Result<()> {
    let (model, other) = (id("m"), id("other"));
    let mut engine = connected(config(), at(0), &["m"])?;
    insert_object(&mut engine, &model)?;
    let turn = drain(&mut engine, at(0));
    let submits = |turn: &Turn| {
        let submit =
            |m: &&ClientMessage| matches!(m, ClientMessage::Notice(ClientNotice::Submit { .. }));
        turn.sent.iter().filter(submit).count()
    };
    let fail = |message: &ClientMessage| match message {
        ClientMessage::Notice(ClientNotice::Submit { model, seq, .. }) => {
            let error = ErrorReply::new(ErrorCode::INTERNAL, "the history could not be read");
            let rejected = ServerPush::SubmitRejected { model: model.clone(), seq: *seq, error };
            Some(vec![ServerMessage::Push(rejected)])
        }
        _ => None,
    };
    // Failed each time it is sent: a server fault, not sent again at once, nor undone.
    let all = settle_refusing(&mut engine, at(0), turn, fail)?;
    assert_eq!(submits(&all), 1, "{:?}", all.sent);
    assert_eq!(server_faults(&all, &model), 1, "{:?}", all.events);
    let rejected = |e: &Event| matches!(e, Event::Domain(DomainEvent::ChangesRejected { .. }));
    assert!(!all.events.iter().any(rejected), "{:?}", all.events);
    let closed = |m: &ClientMessage| matches!(m, ClientMessage::Request { request: ClientRequest::CloseModel { model: m }, .. } if *m == model);
    assert!(all.sent.iter().any(closed), "closed at the server: {:?}", all.sent);

    // Other models are not held back meanwhile.
    engine.add_model(other.clone(), ModelReplica::new(snapshot()?).into())?;
    let turn = drain(&mut engine, at(1));
    request_id(&turn.sent, |r| matches!(r, ClientRequest::Resync { model: m, .. } if *m == other))?;
    settle(&mut engine, at(1), turn)?;
    assert!(engine.is_settled(&other));

    // Sent again after `initial_backoff` (100 ms), then after twice as long: the successful
    // resync in between does not start the backoff over.
    let mut now = 0;
    for wait in [100, 200] {
        let Some(retry) = engine.poll_timeout() else { bail!("no retry is scheduled") };
        assert_eq!(retry, at(now + wait), "after a backoff of {wait} ms");
        now += wait;
        engine.handle_timeout(at(now));
        let turn = drain(&mut engine, at(now));
        let again = settle_refusing(&mut engine, at(now), turn, fail)?;
        assert_eq!(submits(&again), 1, "once more after the backoff: {:?}", again.sent);
        assert_eq!(server_faults(&again, &model), 1, "{:?}", again.events);
    }

    // Once the server can take it, it goes through.
    let Some(later) = engine.poll_timeout() else { bail!("no retry is scheduled") };
    assert_eq!(later, at(now + 400));
    engine.handle_timeout(later);
    let turn = drain(&mut engine, later);
    let last = settle(&mut engine, later, turn)?;
    assert_eq!(submits(&last), 1);
    assert!(engine.is_settled(&model), "acknowledged and live");
    Ok(())
}
