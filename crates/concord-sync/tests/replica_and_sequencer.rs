//! The client replica and the server sequencer, step by step.

use std::collections::BTreeMap;

use anyhow::Result;
use concord_ot::{
    DiscreteOperation, Document, ElementId, IdGenerator, Operation, OperationKind, PathSegment,
    ReplicaId, Value,
};
use concord_protocol::{
    CollectionId, ErrorCode, InFlight, ModelId, ModelSnapshot, SessionId, Timestamp,
};
use concord_sync::{
    Decision, HISTORY_PARTS, ModelReplica, Persisted, Sequencer, SequencerError, StoreChange,
    Submission, SubmitOutcome,
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

/// A submission of one local change, seq `seq`.
fn submission(replica: u64, seq: u64, base_version: u64, operation: Operation) -> Submission {
    Submission {
        author: SessionId(format!("s{replica}")),
        replica: ReplicaId(replica),
        first_seq: seq,
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
    assert!(replica.take_submission(10, usize::MAX).is_none(), "not durable yet");
    replica.mark_durable(seq);
    let (submission, boundary) = replica.take_submission(10, usize::MAX).expect("durable now");
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
                    store.next_seq = p.through + 1;
                    store.pending.push(p);
                }
                StoreChange::ReplacePending(p) => store.pending = p,
                StoreChange::UpdatePending(ops) => {
                    // A run replaces exactly the stored records of its seqs.
                    for op in ops {
                        let at = store.pending.iter().position(|p| p.seq == op.seq);
                        let at = at.expect("a run starts at a stored record");
                        let end = store.pending.iter().position(|p| p.through == op.through);
                        let end = end.expect("a run ends where a stored record ends");
                        store.pending.splice(at..=end, [op]);
                    }
                }
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
    let (sub1, c) = replica.take_submission(1, usize::MAX).expect("one");
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
    let (sub, _) = replica.take_submission(5, usize::MAX).expect("one");
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
    assert_eq!(again, SubmitOutcome::Duplicate(Decision::Committed(commit)));
    assert!(replica.ack(seq, commit.version, commit.timestamp)?.is_empty());
    Ok(())
}

#[test]
fn the_sequencer_refuses_what_it_cannot_order() -> Result<()> {
    let initial = snapshot()?;
    let mut server = Sequencer::new(ModelId::new("m")?, initial.clone(), BTreeMap::new(), 2);
    let op = |i| insert(&initial.data, 0, if i % 2 == 0 { "a" } else { "b" });
    // A base version from the future is refused for good: decided, and answered so again.
    let SubmitOutcome::Refused { record, reason } =
        server.submit(submission(1, 1, 5, op(0)), Timestamp(0))?
    else {
        panic!("refused")
    };
    assert_eq!(reason, SequencerError::BaseVersionAhead { base: 5, current: 0 });
    assert_eq!((record.seq, record.code), (1, ErrorCode::VERSION_OUT_OF_RANGE));
    assert_eq!(
        server.submit(submission(1, 1, 0, op(0)), Timestamp(0))?,
        SubmitOutcome::Duplicate(Decision::Refused(ErrorCode::VERSION_OUT_OF_RANGE))
    );
    assert_eq!(server.commit_of(InFlight { replica: ReplicaId(1), seq: 1 }), None);
    for seq in 2..=6 {
        server.submit(submission(1, seq, server.version(), op(seq)), Timestamp(0))?;
    }
    assert!(matches!(
        server.submit(submission(1, 3, 5, op(0)), Timestamp(0)),
        Err(SequencerError::StaleSeq { last: 6, got: 3, .. })
    ));
    // A gap is refused and decides nothing: the next seq still goes through.
    assert!(matches!(
        server.submit(submission(1, 8, 5, op(0)), Timestamp(0)),
        Err(SequencerError::SeqGap { expected: 7, got: 8, .. })
    ));
    let batch = Submission { first_seq: 7, ..submission(1, 9, server.version(), op(0)) };
    assert!(matches!(server.submit(batch, Timestamp(0))?, SubmitOutcome::Committed(_)));
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
    let outcome =
        server.submit(submission(3, 1, server.version(), invalid.into()), Timestamp(0))?;
    assert!(matches!(
        outcome,
        SubmitOutcome::Refused { reason: SequencerError::Invalid(_), ref record }
            if record.code == ErrorCode::INVALID_OPERATION
    ));
    assert_eq!(*server.document(), before);
    Ok(())
}

/// The in-memory history is bounded by edits as well as by operations: a history of large
/// compound operations (a reconnecting client's composed runs) keeps no more than
/// `2 * HISTORY_PARTS` edits, and a submission from before it is moved forward through
/// operations read from the store, a page at a time, to the same result.
#[test]
fn the_history_in_memory_is_bounded_by_edits_and_older_submissions_are_rebased() -> Result<()> {
    let initial = snapshot()?;
    let mut server = Sequencer::new(ModelId::new("m")?, initial.clone(), BTreeMap::new(), 1_000);
    let mut store = Vec::new();
    // 100 operations of 1,000 one-character inserts each.
    for seq in 1..=100 {
        let parts = (0..1_000).map(|_| insert(&initial.data, 0, "x").discrete()[0].clone());
        let batch = Operation::Compound(parts.collect());
        let outcome = server.submit(submission(1, seq, server.version(), batch), Timestamp(0))?;
        let SubmitOutcome::Committed(record) = outcome else { panic!("committed") };
        store.push(record.operation);
        let held = (server.version() - server.oldest_known_base()) as usize;
        assert!(held * 1_000 <= 2 * HISTORY_PARTS, "{held} operations of 1,000 edits held");
    }
    assert!(server.oldest_known_base() > 0);
    // A submission based at version 10 is refused from memory, then moved through the
    // stored operations a page at a time until memory takes over.
    let mut late = submission(2, 1, 10, insert(&initial.data, 0, "y"));
    // What moving it through every operation since at once gives.
    let mut expected = server.document().clone();
    let moved = store[10..].iter().fold(late.operation.clone(), |op, committed| {
        concord_ot::transform(committed.operation.clone(), op).1
    });
    expected.apply(&moved)?;
    let outcome = loop {
        match server.submit(late.clone(), Timestamp(0)) {
            Err(SequencerError::HistoryUnavailable { from, oldest }) => {
                let through = oldest.min(from + 7);
                let page: Vec<_> = store[from as usize..through as usize].to_vec();
                late = server.rebase(late, &page)?;
                assert_eq!(late.base_version, through);
            }
            outcome => break outcome?,
        }
    };
    assert!(matches!(outcome, SubmitOutcome::Committed(ref r) if r.operation.version == 101));
    assert!(text(server.document()) == text(&expected), "the same text as moved at once");
    assert_eq!(text(server.document()).matches('y').count(), 1);
    // Operations that do not follow the base version are refused as missing history.
    let gap = submission(3, 1, 10, insert(&initial.data, 0, "z"));
    assert!(matches!(
        server.rebase(gap, &store[11..12]),
        Err(SequencerError::HistoryUnavailable { from: 10, .. })
    ));
    Ok(())
}

/// The bound kept of a model's size is never below its exact size, whatever the operations
/// (length prefixes that grow a byte, numbers and dates that take more bytes, values with
/// many ids), and a submission that would pass the limit leaves the model as it was.
#[test]
fn the_size_bound_holds_and_the_limit_refuses_exactly() -> Result<()> {
    let mut ids = IdGenerator::new(ReplicaId(0), 0);
    let json = json!({"text": "", "list": [], "n": 1, "obj": {}, "when": 0});
    let data = Document::new(Value::from_json(&json, &mut ids)?)?;
    let at = |doc: &Document, key: &str| doc.element_at(&[PathSegment::Key(key.into())]).unwrap();
    let initial = ModelSnapshot { data, ..snapshot()? };
    let mut server = Sequencer::new(ModelId::new("m")?, initial.clone(), BTreeMap::new(), 10)
        .with_max_model_bytes(u64::MAX);
    let doc = &initial.data;
    let (text, list, n, obj, when) =
        (at(doc, "text"), at(doc, "list"), at(doc, "n"), at(doc, "obj"), at(doc, "when"));
    let mut ops: Vec<OperationKind> = Vec::new();
    for i in 0..140 {
        let value = Value::from_json(&json!({"k": [i, "v"]}), &mut ids)?;
        ops.push(OperationKind::ArrayInsert { index: 0, value });
    }
    let mut parts = Vec::new();
    for _ in 0..70 {
        parts.push(DiscreteOperation::new(
            text,
            OperationKind::StringSplice { index: 0, delete_count: 0, insert: "ab".into() },
        ));
    }
    let mut seq = 0;
    let mut submit = |server: &mut Sequencer, operation: Operation| -> Result<SubmitOutcome> {
        seq += 1;
        Ok(server.submit(submission(1, seq, server.version(), operation), Timestamp(0))?)
    };
    for kind in ops {
        submit(&mut server, DiscreteOperation::new(list, kind).into())?;
        assert!(server.size_bound().unwrap() >= concord_sync::model_bytes(server.document()));
    }
    let more: Vec<(concord_ot::ElementId, OperationKind)> = vec![
        (n, OperationKind::NumberSet { value: 1.5e300 }),
        (n, OperationKind::NumberDelta { delta: -3.0 }),
        (when, OperationKind::DateSet { value: i64::MIN }),
        (
            obj,
            OperationKind::ObjectAddProperty {
                key: "x".repeat(200),
                value: Value::from_json(&json!([[[1]], {"a": null}]), &mut ids)?,
            },
        ),
        (list, OperationKind::ArrayMove { from: 0, to: 100 }),
        (list, OperationKind::ArrayRemove { index: 3 }),
        (text, OperationKind::StringSet { value: "é".repeat(100) }),
    ];
    submit(&mut server, Operation::Compound(parts))?;
    assert!(server.size_bound().unwrap() >= concord_sync::model_bytes(server.document()));
    for (target, kind) in more {
        submit(&mut server, DiscreteOperation::new(target, kind).into())?;
        assert!(server.size_bound().unwrap() >= concord_sync::model_bytes(server.document()));
    }

    // The same model under a limit just above its size: growing past it is refused and
    // undone, shrinking passes.
    let exact = concord_sync::model_bytes(server.document());
    let snapshot = server.snapshot();
    let mut limited = Sequencer::new(ModelId::new("m")?, snapshot, BTreeMap::new(), 10)
        .with_max_model_bytes(exact + 5);
    assert_eq!(limited.size_bound(), Some(exact));
    let before = limited.document().clone();
    let grow = Operation::Compound(vec![
        DiscreteOperation::new(list, OperationKind::ArrayRemove { index: 0 }),
        DiscreteOperation::new(
            text,
            OperationKind::StringSplice { index: 0, delete_count: 0, insert: "x".repeat(40) },
        ),
    ]);
    let outcome = limited.submit(submission(1, 1, limited.version(), grow), Timestamp(0))?;
    assert!(matches!(
        outcome,
        SubmitOutcome::Refused { reason: SequencerError::ModelTooLarge { .. }, ref record }
            if record.code == ErrorCode::MODEL_TOO_LARGE
    ));
    assert_eq!(*limited.document(), before, "undone exactly");
    let shrink = DiscreteOperation::new(list, OperationKind::ArrayRemove { index: 0 });
    let outcome =
        limited.submit(submission(1, 2, limited.version(), shrink.into()), Timestamp(0))?;
    assert!(matches!(outcome, SubmitOutcome::Committed(_)), "{outcome:?}");
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

/// A rejected submission takes the pending changes that no longer apply with it, but their
/// seqs still reach the server (as no-ops): the next submission starts right after the
/// rejected one, in memory and once restored from the store, so the server never sees a gap.
#[test]
fn after_a_rejection_the_next_submission_follows_it_without_a_gap() -> Result<()> {
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
                StoreChange::AppendPending(p) => {
                    store.next_seq = p.through + 1;
                    store.pending.push(p);
                }
                StoreChange::ReplacePending(p) => store.pending = p,
                StoreChange::UpdatePending(ops) => {
                    // A run replaces exactly the stored records of its seqs.
                    for op in ops {
                        let at = store.pending.iter().position(|p| p.seq == op.seq);
                        let at = at.expect("a run starts at a stored record");
                        let end = store.pending.iter().position(|p| p.through == op.through);
                        let end = end.expect("a run ends where a stored record ends");
                        store.pending.splice(at..=end, [op]);
                    }
                }
                StoreChange::SetInFlight(seq) => store.in_flight_seq = seq,
                other => unreachable!("{other:?}"),
            }
        }
    };
    let target = text_id(&initial.data);
    let op = |kind| -> Operation { DiscreteOperation::new(target, kind).into() };
    // Seq 1 inserts "XYZW"; seq 2 deletes "bc" after it (at 5, which only exists after
    // seq 1); seq 3 inserts at the start.
    let changes = [
        op(OperationKind::StringSplice { index: 0, delete_count: 0, insert: "XYZW".into() }),
        op(OperationKind::StringSplice { index: 5, delete_count: 2, insert: String::new() }),
        op(OperationKind::StringSplice { index: 0, delete_count: 0, insert: "Z".into() }),
    ];
    for change in changes {
        let (seq, _, c) = replica.local_change(change)?;
        keep(vec![c], &mut store);
        replica.mark_durable(seq);
    }
    let (sub, c) = replica.take_submission(1, usize::MAX).expect("seq 1");
    keep(vec![c], &mut store);
    assert_eq!((sub.first_seq, sub.seq), (1, 1));
    // The server refuses seq 1 for good (recorded as its last decision for the replica).
    let record = server.refuse(ReplicaId(1), 1, ErrorCode::INVALID_OPERATION);
    assert_eq!(record.seq, 1);
    let (dropped, changes) = replica.reject_in_flight().expect("in flight");
    keep(changes, &mut store);
    // Seq 2 no longer applies (index 5 is past the end): dropped with it, but kept as a
    // no-op.
    assert_eq!(dropped.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(text(replica.local()), "Zabc");
    for mut restored in [ModelReplica::restore(store.clone())?, replica] {
        assert_eq!(text(restored.local()), "Zabc");
        let (next, _) = restored.take_submission(10, usize::MAX).expect("seqs 2 and 3");
        assert_eq!((next.first_seq, next.seq), (2, 3));
        let submission = Submission {
            first_seq: next.first_seq,
            ..submission(1, next.seq, next.base_version, next.operation)
        };
        let mut server = server.clone();
        let SubmitOutcome::Committed(committed) = server.submit(submission, Timestamp(1))? else {
            panic!("the next submission follows the refused one")
        };
        assert_eq!(committed.seq, 3);
        assert_eq!(text(server.document()), "Zabc");
    }
    Ok(())
}
