//! A replica that made many changes offline reconnects: its pending operations are composed
//! into runs, transformed in place and stored again only where they changed. The replica
//! and the server must end with the same document, the store must rebuild the same view
//! after a crash at any page, and uncomposed changes must give exactly what transforming
//! every remote operation past every pending one gives.

use std::collections::BTreeMap;

use concord_ot::{
    DiscreteOperation, Document, ElementId, IdGenerator, Operation, OperationKind, PathSegment,
    ReplicaId, Value, transform,
};
use concord_protocol::{CollectionId, ModelId, ModelSnapshot, SessionId, Timestamp};
use concord_sync::{
    CatchUp, ModelReplica, Persisted, Sequencer, StoreChange, Submission, SubmitOutcome,
};
use proptest::prelude::*;
use serde_json::json;

type Edit = (usize, usize, String);

fn snapshot() -> ModelSnapshot {
    let mut ids = IdGenerator::new(ReplicaId(0), 0);
    let data = Document::new(Value::from_json(&json!({"text": "s"}), &mut ids).unwrap()).unwrap();
    ModelSnapshot {
        collection: CollectionId::new("notes").unwrap(),
        version: 0,
        created_at: Timestamp(0),
        modified_at: Timestamp(0),
        data,
    }
}

fn text_id(doc: &Document) -> ElementId {
    doc.element_at(&[PathSegment::Key("text".into())]).expect("text")
}

fn text(doc: &Document) -> String {
    doc.text(text_id(doc)).expect("text")
}

/// A splice valid on `doc`: the edit's index and length clamped to its text.
fn splice(doc: &Document, (index, delete, insert): &Edit) -> Operation {
    let len = doc.text_len(text_id(doc)).expect("text");
    let index = (*index).min(len);
    let delete_count = (*delete).min(len - index);
    let kind = OperationKind::StringSplice { index, delete_count, insert: insert.clone() };
    DiscreteOperation::new(text_id(doc), kind).into()
}

/// What the store holds, kept as the engine's batches would change it.
fn keep(store: &mut Persisted, changes: Vec<StoreChange>) {
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
            StoreChange::RemovePendingThrough(seq) => {
                assert!(
                    store.pending.iter().all(|p| p.seq > seq || p.through <= seq),
                    "an ack never splits a stored run"
                );
                store.pending.retain(|p| p.seq > seq);
            }
            StoreChange::SetInFlight(seq) => store.in_flight_seq = seq,
            StoreChange::PutSnapshot(s) => store.snapshot = s,
            other => unreachable!("no model is created or deleted here: {other:?}"),
        }
    }
}

struct Outcome {
    server: String,
    replica: String,
    /// What transforming each remote operation past each pending one, one by one, gives.
    one_by_one: String,
    /// The most pending operations one page's rewrite stored, after the first page.
    largest_rewrite_after_first: usize,
}

/// Replica 1 makes `local` offline while replica 2 commits `remote`; replica 1 then
/// catches up page by page (crashing after page `crash_after`, if any) and pushes its
/// changes in bounded submissions.
fn reconnect(local: &[Edit], remote: &[Edit], page: usize, crash_after: Option<usize>) -> Outcome {
    let initial = snapshot();
    let model = ModelId::new("m").unwrap();
    let mut server = Sequencer::new(model, initial.clone(), BTreeMap::new(), 1_000_000);
    let mut replica = ModelReplica::new(initial.clone());
    let mut store = Persisted {
        snapshot: initial.clone(),
        server_operations: Vec::new(),
        pending: Vec::new(),
        in_flight_seq: None,
        next_seq: 1,
    };
    let mut local_ops = Vec::new();
    for edit in local {
        let op = splice(replica.local(), edit);
        local_ops.push(op.clone());
        let (seq, _, change) = replica.local_change(op).unwrap();
        keep(&mut store, vec![change]);
        replica.mark_durable(seq);
    }
    for (seq, edit) in (1..).zip(remote) {
        let op = splice(server.document(), edit);
        let base_version = server.version();
        let submission = Submission {
            author: SessionId("s2".into()),
            replica: ReplicaId(2),
            first_seq: seq,
            seq,
            base_version,
            operation: op,
        };
        assert!(matches!(
            server.submit(submission, Timestamp(1)).unwrap(),
            SubmitOutcome::Committed(_)
        ));
    }

    // The old way: every remote operation through every pending one.
    let replay = server.operations_since(0).unwrap().to_vec();
    let mut one_by_one = local_ops;
    for committed in &replay {
        let mut r = committed.operation.clone();
        for p in one_by_one.iter_mut() {
            let (r2, p2) = transform(r, p.clone());
            r = r2;
            *p = p2;
        }
    }
    let mut expected = server.document().clone();
    for p in &one_by_one {
        expected.apply(p).unwrap();
    }

    let mut largest_rewrite_after_first = 0;
    for (n, ops) in replay.chunks(page.max(1)).enumerate() {
        for op in ops {
            let (_, changes) = replica.remote_deferred(op.clone()).unwrap();
            keep(&mut store, changes);
        }
        let rewrite = replica.take_pending_rewrite();
        if let (true, Some(StoreChange::UpdatePending(ops))) = (n > 0, &rewrite) {
            largest_rewrite_after_first = largest_rewrite_after_first.max(ops.len());
        }
        keep(&mut store, rewrite.into_iter().collect());
        let restored = ModelReplica::restore(store.clone()).unwrap();
        assert_eq!(restored.local(), replica.local(), "the store rebuilds the view after page {n}");
        if crash_after == Some(n) {
            replica = restored;
        }
    }

    while replica.has_unacknowledged() {
        let (_, boundary) = replica.take_submission(8, 2048).expect("durable changes");
        keep(&mut store, vec![boundary]);
        let sub = replica.submission();
        assert!(sub.is_none(), "not sent before its boundary is stored");
        let seq = replica.in_flight_seq().unwrap();
        replica.mark_in_flight_stored(seq);
        let sub = replica.submission().unwrap();
        let submission = Submission {
            author: SessionId("s1".into()),
            replica: ReplicaId(1),
            first_seq: sub.first_seq,
            seq: sub.seq,
            base_version: sub.base_version,
            operation: sub.operation,
        };
        let SubmitOutcome::Committed(record) = server.submit(submission, Timestamp(2)).unwrap()
        else {
            panic!("a submission in seq order commits")
        };
        let changes =
            replica.ack(record.seq, record.operation.version, record.operation.timestamp).unwrap();
        keep(&mut store, changes);
        let restored = ModelReplica::restore(store.clone()).unwrap();
        assert_eq!(restored.local(), replica.local(), "the store rebuilds the view after an ack");
    }
    assert_eq!(replica.confirmed().data, *server.document());
    assert!(store.pending.is_empty(), "everything acknowledged is gone from the store");
    Outcome {
        server: text(server.document()),
        replica: text(replica.local()),
        one_by_one: text(&expected),
        largest_rewrite_after_first,
    }
}

#[test]
fn a_long_offline_session_reconnects_through_few_composed_runs() {
    // Typing on at the end offline while another client types at the start.
    let local: Vec<Edit> = (0..600).map(|i| (1 + i, 0, "a".to_string())).collect();
    let remote: Vec<Edit> = (0..300).map(|_| (0, 0, "b".to_string())).collect();
    let outcome = reconnect(&local, &remote, 64, Some(2));
    let expected = format!("{}s{}", "b".repeat(300), "a".repeat(600));
    assert_eq!(outcome.server, expected);
    assert_eq!(outcome.replica, expected);
    assert_eq!(outcome.one_by_one, expected);
    // 600 one-character changes are one run: each later page stores it again, once.
    assert_eq!(outcome.largest_rewrite_after_first, 1);
}

#[test]
fn a_crash_between_pages_loses_nothing_and_applies_nothing_twice() {
    let local: Vec<Edit> = (0..100).map(|i| (1 + 2 * i, 0, "xy".to_string())).collect();
    let remote: Vec<Edit> = (0..90).map(|i| (i % 3, i % 2, "b".to_string())).collect();
    for crash in [None, Some(0), Some(1), Some(5)] {
        let outcome = reconnect(&local, &remote, 16, crash);
        assert_eq!(outcome.replica, outcome.server, "crash after page {crash:?}");
        assert_eq!(outcome.replica, outcome.one_by_one, "crash after page {crash:?}");
    }
}

fn edits(max: usize) -> impl Strategy<Value = Vec<Edit>> {
    let edit = (0usize..12, 0usize..3, "[abé😀]{0,3}").prop_map(|(i, d, s)| (i, d, s));
    prop::collection::vec(edit, 0..max)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(200), ..ProptestConfig::default() })]

    /// Up to 32 pending changes are not composed: transformed in place, one run each, they
    /// give exactly what transforming one pending operation at a time gave.
    #[test]
    fn in_place_transformation_gives_what_one_by_one_gives(
        local in edits(33),
        remote in edits(40),
        page in 1usize..20,
        crash in proptest::option::of(0usize..4),
    ) {
        let outcome = reconnect(&local, &remote, page, crash);
        prop_assert_eq!(&outcome.replica, &outcome.server);
        prop_assert_eq!(&outcome.replica, &outcome.one_by_one);
    }

    /// Composed runs converge with the server whatever the edits, pages and crash. (Where a
    /// composed run and a remote insertion put text into the same gap, their order may
    /// differ from the one-at-a-time result: both sides agree on it.)
    #[test]
    fn composed_runs_converge_with_the_server(
        local in edits(150),
        remote in edits(40),
        page in 1usize..20,
        crash in proptest::option::of(0usize..4),
    ) {
        let outcome = reconnect(&local, &remote, page, crash);
        prop_assert_eq!(&outcome.replica, &outcome.server);
    }
}

/// `default` cases, or `PROPTEST_CASES` for a longer local run.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Rebuilds model `m` from a real store, its pending records read `page` at a time.
fn restore_paged(store: &dyn concord_storage::OfflineStore, page: usize) -> ModelReplica {
    let model = ModelId::new("m").unwrap();
    let head = pollster::block_on(store.load_model_head(&model)).unwrap().expect("stored");
    assert!(head.pending.is_empty(), "the head holds no pending operation");
    let mut restoring = concord_sync::store::RestoringModel::new(head).unwrap();
    let mut pages = 0;
    while let Some(after) = restoring.next_after() {
        let records = pollster::block_on(store.pending_page(&model, after, page)).unwrap();
        assert!(records.len() <= page);
        restoring.push(records).unwrap();
        pages += 1;
        assert!(pages < 100_000, "the pages end");
    }
    restoring.finish().unwrap().replica
}

fn commit(store: &dyn concord_storage::OfflineStore, changes: Vec<StoreChange>) {
    let model = ModelId::new("m").unwrap();
    let batch = concord_storage::Batch::from(concord_sync::store::mutations(&model, changes));
    pollster::block_on(store.commit(batch)).unwrap();
}

/// 2,000 one-character changes made offline and stored one record each come back from a
/// real store, read in pages, as a few composed runs; the runs are rewritten, acknowledged
/// and restored again against the same store, which accepts every change as a whole run.
#[test]
fn a_restore_composes_pages_of_stored_changes_into_runs() {
    use concord_storage::{MemoryAdapter, StorageAdapter, StoreKey};
    let adapter = MemoryAdapter::new();
    let store = pollster::block_on(adapter.open(&StoreKey::new("s", "u"))).unwrap();
    let model = ModelId::new("m").unwrap();
    let initial = snapshot();
    let mut replica = ModelReplica::new(initial.clone());
    commit(&*store, vec![StoreChange::Downloaded { snapshot: initial.clone() }]);
    for n in 0..2_000 {
        let op = splice(replica.local(), &(n, 0, "a".into()));
        let (seq, _, change) = replica.local_change(op).unwrap();
        commit(&*store, vec![change]);
        replica.mark_durable(seq);
    }
    let stored = pollster::block_on(store.load_model(&model)).unwrap().unwrap();
    assert_eq!(stored.pending.len(), 2_000, "one record per change while offline");

    let mut restored = restore_paged(&*store, 64);
    assert_eq!(restored.local(), replica.local());
    let runs = restored.unacknowledged().count();
    assert!(runs <= 40, "composed while restoring: {runs} runs");

    // A remote operation rewrites the runs; the store takes each as one record.
    let mut server = Sequencer::new(model.clone(), initial, BTreeMap::new(), 1_000_000);
    let remote = splice(server.document(), &(0, 0, "b".into()));
    let submission = Submission {
        author: SessionId("s2".into()),
        replica: ReplicaId(2),
        first_seq: 1,
        seq: 1,
        base_version: 0,
        operation: remote,
    };
    assert!(matches!(
        server.submit(submission, Timestamp(1)).unwrap(),
        SubmitOutcome::Committed(_)
    ));
    let committed = server.operations_since(0).unwrap()[0].clone();
    let (_, changes) = restored.remote(committed).unwrap();
    commit(&*store, changes);
    let stored = pollster::block_on(store.load_model(&model)).unwrap().unwrap();
    assert!(stored.pending.len() <= runs, "{} records for {runs} runs", stored.pending.len());
    assert_eq!(stored.summary.pending_count, 2_000, "every seq stays stored");
    let again = restore_paged(&*store, 1);
    assert_eq!(again.local(), restored.local());
    assert_eq!(text(restored.local()), format!("b{}s", "a".repeat(2_000)));

    // Submitted and acknowledged run by run, from the store as restored: nothing is lost or
    // applied twice, and an acknowledgement never splits a stored run.
    let mut replica = again;
    while replica.has_unacknowledged() {
        let (_, boundary) = replica.take_submission(4, 4096).expect("durable changes");
        commit(&*store, vec![boundary]);
        let seq = replica.in_flight_seq().unwrap();
        replica.mark_in_flight_stored(seq);
        let sub = replica.submission().unwrap();
        let submission = Submission {
            author: SessionId("s1".into()),
            replica: ReplicaId(1),
            first_seq: sub.first_seq,
            seq: sub.seq,
            base_version: sub.base_version,
            operation: sub.operation,
        };
        let SubmitOutcome::Committed(record) = server.submit(submission, Timestamp(2)).unwrap()
        else {
            panic!("a submission in seq order commits")
        };
        let changes =
            replica.ack(record.seq, record.operation.version, record.operation.timestamp).unwrap();
        commit(&*store, changes);
        let reread = restore_paged(&*store, 16);
        assert_eq!(reread.local(), replica.local(), "the store rebuilds the view after each ack");
    }
    assert_eq!(text(replica.local()), text(server.document()));
    let stored = pollster::block_on(store.load_model(&model)).unwrap().unwrap();
    assert_eq!((stored.pending.len(), stored.summary.pending_count), (0, 0));
}

/// An offline subscriber's catch-up is the missed operations only while they make one
/// page: a few compound operations holding more edits than a page does (a fast typist's
/// batches) come as a snapshot, so the subscriber never holds more than a page of edits.
#[test]
fn a_catch_up_of_more_edits_than_a_page_holds_is_a_snapshot() {
    let model = ModelId::new("m").unwrap();
    let mut server = Sequencer::new(model, snapshot(), BTreeMap::new(), 1_000_000);
    let batch = |server: &Sequencer, from: usize, edits: usize| {
        let parts =
            (from..from + edits).map(|i| match splice(server.document(), &(i, 0, "a".into())) {
                Operation::Discrete(op) => op,
                Operation::Compound(_) => unreachable!("one splice"),
            });
        Operation::Compound(parts.collect())
    };
    for (seq, from) in (1..=3).zip([1, 2001, 4001]) {
        let submission = Submission {
            author: SessionId("s2".into()),
            replica: ReplicaId(2),
            first_seq: seq,
            seq,
            base_version: server.version(),
            operation: batch(&server, from, 2000),
        };
        assert!(matches!(
            server.submit(submission, Timestamp(1)).unwrap(),
            SubmitOutcome::Committed(_)
        ));
    }
    // Two batches (4,000 edits) fit one page; three (6,000) do not.
    assert!(matches!(server.catch_up(Some(1), 256), CatchUp::Operations(ops) if ops.len() == 2));
    assert!(matches!(server.catch_up(Some(0), 256), CatchUp::Snapshot(s) if s.version == 3));
    assert!(matches!(server.catch_up(Some(0), 2), CatchUp::Snapshot(_)));
}
