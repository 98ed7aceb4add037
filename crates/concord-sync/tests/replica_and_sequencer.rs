//! The client replica and the server sequencer, step by step.

use std::collections::BTreeMap;

use anyhow::Result;
use concord_ot::{
    DiscreteOperation, Document, ElementId, IdGenerator, Operation, OperationKind, PathSegment,
    ReplicaId, Value,
};
use concord_protocol::{CollectionId, InFlight, ModelId, ModelSnapshot, SessionId, Timestamp};
use concord_sync::{
    ModelReplica, Persisted, Sequencer, SequencerError, StoreChange, Submission, SubmitOutcome,
};
use serde_json::json;

fn snapshot() -> Result<ModelSnapshot> {
    let mut ids = IdGenerator::new(ReplicaId(0), 0);
    let data = Document::new(Value::from_json(&json!({"text": "abc"}), &mut ids)?)?;
    Ok(ModelSnapshot {
        collection: CollectionId::new("notes")?,
        version: 0,
        created_at: Timestamp(0),
        modified_at: Timestamp(0),
        data,
    })
}

fn text_id(doc: &Document) -> ElementId {
    doc.element_at(&[PathSegment::Key("text".into())]).expect("text")
}

fn insert(doc: &Document, index: usize, text: &str) -> Operation {
    let kind = OperationKind::StringSplice { index, delete_count: 0, insert: text.into() };
    DiscreteOperation::new(text_id(doc), kind).into()
}

fn text(doc: &Document) -> String {
    doc.text(text_id(doc)).expect("text")
}

fn submission(replica: u64, seq: u64, base_version: u64, operation: Operation) -> Submission {
    Submission {
        author: SessionId(format!("s{replica}")),
        replica: ReplicaId(replica),
        seq,
        base_version,
        operation,
    }
}

#[test]
fn a_local_change_is_sent_only_once_durable() -> Result<()> {
    let mut replica = ModelReplica::new(snapshot()?);
    let op = insert(replica.local(), 3, "d");
    let (seq, _, change) = replica.local_change(op)?;
    assert!(matches!(change, StoreChange::AppendPending(_)));
    assert_eq!(text(replica.local()), "abcd");
    assert!(replica.take_submission(10).is_none(), "not durable yet");
    replica.mark_durable(seq);
    let (submission, boundary) = replica.take_submission(10).expect("durable now");
    assert_eq!(boundary, StoreChange::SetInFlight(Some(seq)));
    assert!(replica.submission().is_none(), "the boundary must be stored before sending");
    replica.mark_in_flight_stored(seq);
    assert_eq!(replica.submission(), Some(submission));
    Ok(())
}

#[test]
fn remote_operations_transform_local_ones_and_the_store_rebuilds_the_same_view() -> Result<()> {
    let initial = snapshot()?;
    let mut server = Sequencer::new(ModelId::new("m")?, initial.clone(), BTreeMap::new(), 100);
    let mut replica = ModelReplica::new(initial.clone());
    let mut store = Persisted {
        snapshot: initial.clone(),
        server_operations: Vec::new(),
        pending: Vec::new(),
        in_flight_seq: None,
        next_seq: 1,
    };
    let keep = |changes: Vec<StoreChange>, store: &mut Persisted| {
        for change in changes {
            match change {
                StoreChange::AppendServerOperation(op) => store.server_operations.push(op),
                StoreChange::AppendPending(p) => {
                    store.next_seq = p.seq + 1;
                    store.pending.push(p);
                }
                StoreChange::ReplacePending(p) => store.pending = p,
                StoreChange::RemovePendingThrough(seq) => store.pending.retain(|p| p.seq > seq),
                StoreChange::SetInFlight(seq) => store.in_flight_seq = seq,
                StoreChange::PutSnapshot(s) => store.snapshot = s,
                other => unreachable!("no model is created or deleted in this test: {other:?}"),
            }
        }
    };
    // Two local edits, the first in flight.
    let (seq1, _, c) = replica.local_change(insert(replica.local(), 0, "X"))?;
    keep(vec![c], &mut store);
    replica.mark_durable(seq1);
    let (sub1, c) = replica.take_submission(1).expect("one");
    keep(vec![c], &mut store);
    let (_, _, c) = replica.local_change(insert(replica.local(), 4, "Y"))?;
    keep(vec![c], &mut store);
    assert_eq!(text(replica.local()), "XabcY");

    // Another client's edit is committed first.
    let other = insert(&initial.data, 1, "Z");
    let SubmitOutcome::Committed(remote) =
        server.submit(submission(2, 1, 0, other), Timestamp(1))?
    else {
        panic!("first submission commits")
    };
    let (applied, changes) = replica.remote(remote.operation)?;
    keep(changes, &mut store);
    assert!(applied.is_some());
    assert_eq!(text(replica.local()), "XaZbcY");
    let restored = ModelReplica::restore(store.clone())?;
    assert_eq!(restored.local(), replica.local());

    // Our submission arrives at the server against version 0 and commits at version 2.
    let ours = submission(1, sub1.seq, sub1.base_version, sub1.operation);
    let SubmitOutcome::Committed(record) = server.submit(ours, Timestamp(2))? else {
        panic!("commits")
    };
    keep(
        replica.ack(record.seq, record.operation.version, record.operation.timestamp)?,
        &mut store,
    );
    assert_eq!(replica.confirmed().data, *server.document(), "the ack carried no operation");
    let restored = ModelReplica::restore(store)?;
    assert_eq!(restored.local(), replica.local());
    assert_eq!(text(replica.local()), "XaZbcY");
    Ok(())
}

#[test]
fn a_committed_in_flight_submission_found_in_the_replay_counts_as_its_ack() -> Result<()> {
    let initial = snapshot()?;
    let mut server = Sequencer::new(ModelId::new("m")?, initial.clone(), BTreeMap::new(), 100);
    let mut replica = ModelReplica::new(initial);
    let (seq, _, _) = replica.local_change(insert(replica.local(), 0, "X"))?;
    replica.mark_durable(seq);
    let (sub, _) = replica.take_submission(5).expect("one");
    replica.mark_in_flight_stored(seq);
    // The server commits it, but the ack is lost with the connection.
    server.submit(submission(1, sub.seq, sub.base_version, sub.operation.clone()), Timestamp(1))?;
    // Resync: the server says it was committed and replays it.
    let commit = server.commit_of(InFlight { replica: ReplicaId(1), seq }).expect("committed");
    replica.in_flight_committed_at(commit.version);
    for op in server.operations_since(0)?.to_vec() {
        replica.remote(op)?;
    }
    assert!(!replica.has_unacknowledged());
    assert_eq!(text(replica.local()), "Xabc", "applied once, not twice");
    // A resubmission is answered with the original ack and ignored.
    let again =
        server.submit(submission(1, sub.seq, sub.base_version, sub.operation), Timestamp(2))?;
    assert_eq!(again, SubmitOutcome::Duplicate(commit));
    assert!(replica.ack(seq, commit.version, commit.timestamp)?.is_empty());
    Ok(())
}

#[test]
fn the_sequencer_refuses_what_it_cannot_order() -> Result<()> {
    let initial = snapshot()?;
    let mut server = Sequencer::new(ModelId::new("m")?, initial.clone(), BTreeMap::new(), 2);
    let op = |i| insert(&initial.data, 0, if i % 2 == 0 { "a" } else { "b" });
    assert!(matches!(
        server.submit(submission(1, 1, 5, op(0)), Timestamp(0)),
        Err(SequencerError::BaseVersionAhead { base: 5, current: 0 })
    ));
    for seq in 1..=5 {
        server.submit(submission(1, seq, server.version(), op(seq)), Timestamp(0))?;
    }
    assert!(matches!(
        server.submit(submission(1, 3, 5, op(0)), Timestamp(0)),
        Err(SequencerError::StaleSeq { last: 5, got: 3, .. })
    ));
    // A submission from far back needs history from the store.
    let far_back = server.submit(submission(2, 1, 0, op(0)), Timestamp(0));
    let Err(SequencerError::HistoryUnavailable { from: 0, oldest }) = far_back else {
        panic!("expected a history request, got {far_back:?}")
    };
    assert!(oldest > 0);
    let invalid = DiscreteOperation::new(
        text_id(&initial.data),
        OperationKind::StringSplice { index: 99, delete_count: 0, insert: "x".into() },
    );
    let before = server.document().clone();
    assert!(matches!(
        server.submit(submission(3, 1, server.version(), invalid.into()), Timestamp(0)),
        Err(SequencerError::Invalid(_))
    ));
    assert_eq!(*server.document(), before);
    Ok(())
}

#[test]
fn a_local_change_neutralised_by_a_remote_one_is_reported() -> Result<()> {
    let initial = snapshot()?;
    let mut server = Sequencer::new(ModelId::new("m")?, initial.clone(), BTreeMap::new(), 100);
    let mut replica = ModelReplica::new(initial.clone());
    let text = text_id(&initial.data);
    let set = |value: &str| -> Operation {
        DiscreteOperation::new(text, OperationKind::StringSet { value: value.into() }).into()
    };
    let (seq, _, _) = replica.local_change(insert(replica.local(), 0, "X"))?;
    let SubmitOutcome::Committed(remote) =
        server.submit(submission(2, 1, 0, set("new")), Timestamp(1))?
    else {
        panic!("commits")
    };
    let (applied, _) = replica.remote(remote.operation)?;
    assert_eq!(applied.expect("applied").neutralised, vec![seq], "a set beats the splice");
    assert_eq!(replica.local().text(text).as_deref(), Some("new"));
    Ok(())
}
