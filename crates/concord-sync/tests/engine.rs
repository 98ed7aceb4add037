//! The client engine driven by hand against a sequencer: the polling order, durability
//! before sending, and the events an application hears.

use std::collections::BTreeMap;

use anyhow::Result;
use concord_ot::{
    DiscreteOperation, Document, IdGenerator, OperationKind, PathSegment, ReplicaId, Value,
};
use concord_protocol::{
    ClientMessage, ClientNotice, CollectionId, ModelId, ModelSnapshot, ReconnectToken,
    ServerMessage, ServerPush, Session, SessionId, Timestamp, User, UserId,
};
use concord_sync::{
    ClientEngine, DomainEvent, EngineConfig, Event, ModelEvent, ModelReplica, Sequencer,
    StoreChange, Submission, SubmitOutcome, Time,
};
use serde_json::json;

fn session() -> Session {
    Session {
        session: SessionId("s".into()),
        user: User { id: UserId("u".into()), display_name: None, anonymous: false },
        reconnect_token: ReconnectToken("t".into()),
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
    }
}

/// A model `{"n": 1}` at version 0, loaded in a connected engine whose resync request was
/// answered with `ResyncStarted { current_version }`.
fn engine_resyncing(current_version: u64) -> Result<(ClientEngine, ModelId, ModelSnapshot)> {
    let mut ids = IdGenerator::new(ReplicaId(0), 0);
    let data = Document::new(Value::from_json(&json!({"n": 1}), &mut ids)?)?;
    let snapshot = ModelSnapshot {
        collection: CollectionId::new("c")?,
        version: 0,
        created_at: Timestamp(0),
        modified_at: Timestamp(0),
        data,
    };
    let model = ModelId::new("m")?;
    let mut engine = ClientEngine::new(ReplicaId(1), EngineConfig::default());
    engine.add_model(model.clone(), ModelReplica::new(snapshot.clone()).into())?;
    engine.handle_connected(Time::ZERO, &session(), Vec::new(), Vec::new());
    let Some(ClientMessage::Request { id, .. }) = engine.poll_transmit(Time::ZERO) else {
        panic!("resync")
    };
    engine.handle_message(
        Time::ZERO,
        ServerMessage::Response {
            to: id,
            response: concord_protocol::ServerResponse::ResyncStarted {
                model: model.clone(),
                current_version,
                in_flight_committed: None,
                permissions: concord_protocol::Permissions::ALL,
                created_at: concord_protocol::Timestamp(0),
            },
        },
    );
    Ok((engine, model, snapshot))
}

#[test]
fn a_change_is_stored_then_sent_then_acknowledged() -> Result<()> {
    let (mut engine, model, snapshot) = engine_resyncing(0)?;
    let data = snapshot.data.clone();
    let mut server = Sequencer::new(model.clone(), snapshot, BTreeMap::new(), 10);
    // The resync finds nothing missed.
    let last_page = ServerPush::ResyncPage {
        model: model.clone(),
        operations: vec![],
        authors: vec![],
        last: true,
    };
    engine.handle_message(Time::ZERO, ServerMessage::Push(last_page));
    while engine.poll_transmit(Time::ZERO).is_some() {}
    while engine.poll_event().is_some() {}

    let n = data.element_at(&[PathSegment::Key("n".into())]).unwrap();
    let delta = DiscreteOperation::new(n, OperationKind::NumberDelta { delta: 2.0 });
    let seq = engine.local_change(&model, delta.into())?;
    let modified = Event::Model { model: model.clone(), event: ModelEvent::Modified };
    assert_eq!(engine.poll_event(), Some(modified));
    let batch = engine.poll_storage().expect("the change is stored first");
    assert!(matches!(batch.changes[..], [StoreChange::AppendPending(_)]));
    assert!(
        engine.poll_transmit(Time::ZERO).is_none(),
        "nothing leaves before the store is durable"
    );

    engine.handle_durable(batch.id);
    let boundary = engine.poll_storage().expect("then the in-flight boundary");
    assert_eq!(boundary.changes, vec![StoreChange::SetInFlight(Some(seq))]);
    assert!(engine.poll_transmit(Time::ZERO).is_none(), "nor before the boundary is");
    engine.handle_durable(boundary.id);
    let Some(ClientMessage::Notice(ClientNotice::Submit {
        first_seq,
        seq: sent,
        base_version,
        operation,
        ..
    })) = engine.poll_transmit(Time::ZERO)
    else {
        panic!("the submission goes out")
    };
    assert_eq!((first_seq, sent), (1, seq));

    let submission = Submission {
        author: SessionId("s1".into()),
        replica: ReplicaId(1),
        first_seq,
        seq,
        base_version,
        operation,
    };
    let SubmitOutcome::Committed(record) = server.submit(submission, Timestamp(5))? else {
        panic!("commits")
    };
    let ack = ServerPush::Ack {
        model: model.clone(),
        seq,
        version: record.operation.version,
        timestamp: Timestamp(5),
    };
    engine.handle_message(Time::ZERO, ServerMessage::Push(ack));
    let events: Vec<Event> = std::iter::from_fn(|| engine.poll_event()).collect();
    let of_model = |event| Event::Model { model: model.clone(), event };
    assert!(events.contains(&of_model(ModelEvent::Stored { seq })));
    assert!(events.contains(&of_model(ModelEvent::Acknowledged { seq, version: 1 })));
    assert!(events.contains(&of_model(ModelEvent::Committed)));
    assert!(engine.is_settled(&model));
    assert_eq!(engine.model(&model).unwrap().local(), server.document());
    Ok(())
}

#[test]
fn a_protocol_violation_releases_the_model_for_a_reload_from_the_store() -> Result<()> {
    let (mut engine, model, snapshot) = engine_resyncing(5)?;
    let data = snapshot.data;
    // The replay skips versions 1..=4: the server broke the protocol.
    let n = data.element_at(&[PathSegment::Key("n".into())]).unwrap();
    let operation = concord_protocol::CommittedOperation {
        version: 5,
        author: SessionId("s2".into()),
        timestamp: Timestamp(1),
        operation: DiscreteOperation::new(n, OperationKind::NumberSet { value: 3.0 }).into(),
    };
    let page = ServerPush::ResyncPage {
        model: model.clone(),
        operations: vec![operation],
        authors: vec![],
        last: true,
    };
    engine.handle_message(Time::ZERO, ServerMessage::Push(page));
    let events: Vec<Event> = std::iter::from_fn(|| engine.poll_event()).collect();
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Domain(DomainEvent::ProtocolViolation { model: m, .. }) if *m == model
    )));
    assert!(engine.model(&model).is_none(), "released, to be reloaded from the store");
    assert!(engine.poll_storage().is_none(), "nothing half-applied reaches the store");
    Ok(())
}
