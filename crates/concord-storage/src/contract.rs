//! The behaviour every backend must show, as a test suite any backend's tests can run.
//!
//! [`CHECKS`] lists the checks; each gets an adapter with no stores in it and panics (with
//! its name in the message) on the first difference. Native tests drive them with any
//! executor; the IndexedDB backend runs the same list in a browser.
//!
//! ```
//! # use concord_storage::{contract, MemoryAdapter};
//! for check in contract::CHECKS {
//!     pollster::block_on((check.run)(&MemoryAdapter::new()));
//! }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;

use concord_ot::{
    DiscreteOperation, ElementId, Operation, OperationKind, ReplicaId, Value, ValueData,
};
use concord_protocol::{
    CollectionId, CommittedOperation, CreationNonce, ModelId, Permissions, SessionId, Timestamp,
    User, UserId,
};

use crate::adapter::{OfflineStore, StorageAdapter};
use crate::batch::{Batch, Mutation};
use crate::error::StorageError;
use crate::faults::{Fault, FaultyAdapter, InjectedFault};
use crate::records::{
    CreationRecord, ModelRecord, PendingOperation, Snapshot, StoreKey, Tombstone,
};

/// The future of one check.
pub type CheckFuture<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// One check of the contract.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    pub name: &'static str,
    /// Runs the check against an adapter that holds no store yet.
    pub run: for<'a> fn(&'a dyn StorageAdapter) -> CheckFuture<'a>,
}

macro_rules! checks {
    ($($name:ident),* $(,)?) => {
        /// Every check, in a stable order.
        pub const CHECKS: &[Check] = &[
            $(Check { name: stringify!($name), run: |adapter| Box::pin($name(adapter)) },)*
        ];
    };
}

checks!(
    new_store_is_empty,
    model_state_round_trips,
    unsynced_lists_only_what_the_server_has_not_confirmed,
    mutations_see_earlier_mutations_of_their_batch,
    rejected_batch_changes_nothing,
    group_commit_is_all_or_nothing,
    group_commit_applies_in_order,
    snapshot_compacts_server_operations,
    snapshot_may_not_open_a_gap,
    server_operations_must_be_contiguous,
    pending_sequence_numbers_are_never_reused,
    replace_and_remove_pending,
    update_pending_in_place,
    pending_runs_cover_their_seqs,
    pending_pages,
    in_flight_boundary,
    element_counter_never_decreases,
    put_model_keeps_data,
    delete_model_removes_everything,
    mutations_need_a_record,
    creation_records,
    subscriptions,
    identities,
    replica_id_is_set_once,
    reopen_keeps_everything,
    second_open_is_in_use,
    stores_are_separate_per_key,
    destroy_removes_the_store,
    empty_commits_are_no_ops,
    failed_commit_changes_nothing,
    in_doubt_commit_is_applied,
    crash_keeps_what_was_applied,
);

// Fixtures.

/// The key most checks use.
pub fn key() -> StoreKey {
    StoreKey::new("wss://concord.test/domain", "alice")
}

pub fn model_id(n: u64) -> ModelId {
    ModelId::new(format!("model-{n}")).expect("valid id")
}

pub fn collection() -> CollectionId {
    CollectionId::new("notes").expect("valid id")
}

pub fn record(n: u64) -> ModelRecord {
    ModelRecord::new(model_id(n), collection())
}

/// An object root whose id and one property depend on `n`.
pub fn root(n: u64) -> Value {
    let child = Value::new(ElementId::new(0, n + 1), ValueData::Number(n as f64));
    Value::new(ElementId::new(0, 0), ValueData::Object(BTreeMap::from([("n".to_string(), child)])))
}

pub fn snapshot(version: u64) -> Snapshot {
    Snapshot {
        version,
        created_at: Timestamp(1_000),
        modified_at: Timestamp(1_000 + version as i64),
        root: root(version),
    }
}

/// An operation that differs with `n`.
pub fn operation(n: u64) -> Operation {
    let kind = OperationKind::NumberDelta { delta: n as f64 };
    DiscreteOperation::new(ElementId::new(0, 1), kind).into()
}

pub fn server_operation(version: u64) -> CommittedOperation {
    CommittedOperation {
        version,
        author: SessionId(format!("session-{}", version % 3)),
        timestamp: Timestamp(2_000 + version as i64),
        operation: operation(version),
    }
}

pub fn server_operations(versions: std::ops::RangeInclusive<u64>) -> Vec<CommittedOperation> {
    versions.map(server_operation).collect()
}

pub fn pending(seq: u64) -> PendingOperation {
    PendingOperation::new(seq, operation(1_000 + seq))
}

pub fn pendings(seqs: impl IntoIterator<Item = u64>) -> Vec<PendingOperation> {
    seqs.into_iter().map(pending).collect()
}

pub fn creation(n: u64) -> CreationRecord {
    CreationRecord {
        collection: collection(),
        initial: root(n),
        nonce: CreationNonce([n as u8; 16]),
    }
}

async fn open(adapter: &dyn StorageAdapter) -> Box<dyn OfflineStore> {
    adapter.open(&key()).await.expect("open the store")
}

async fn commit(store: &dyn OfflineStore, batch: Batch) {
    store.commit(batch).await.expect("commit a valid batch");
}

/// Asserts that `result` is an injected failure of this kind.
fn assert_injected(result: Result<(), StorageError>, fault: Fault) {
    match &result {
        Err(error) if InjectedFault::of(error).is_some_and(|f| f.fault == fault) => {}
        other => panic!("expected an injected {fault} failure, got {other:?}"),
    }
}

/// Asserts that `result` is a rejection of `batch`/`mutation`.
fn assert_rejected(result: Result<(), StorageError>, batch: usize, mutation: usize) {
    match result {
        Err(StorageError::InvalidBatch { batch: b, mutation: m, .. })
            if (b, m) == (batch, mutation) => {}
        other => panic!("expected batch {batch} mutation {mutation} to be rejected, got {other:?}"),
    }
}

/// Everything a store holds, for before/after comparisons.
#[derive(Debug, PartialEq)]
struct Contents {
    models: Vec<crate::records::ModelSummary>,
    states: Vec<Option<crate::records::ModelState>>,
    subscriptions: BTreeSet<ModelId>,
    replica: Option<ReplicaId>,
    identities: crate::records::IdentityCache,
}

async fn contents(store: &dyn OfflineStore) -> Contents {
    let models = store.models().await.expect("models");
    let mut states = Vec::new();
    for summary in &models {
        states.push(store.load_model(&summary.record.id).await.expect("load"));
    }
    Contents {
        models,
        states,
        subscriptions: store.subscriptions().await.expect("subscriptions"),
        replica: store.replica_id().await.expect("replica id"),
        identities: store.identities().await.expect("identities"),
    }
}

/// A batch that gives model `n` a record, a snapshot at version 2, server operations 3..=4,
/// pending operations 1..=2 and a creation record.
pub fn full_model_batch(n: u64) -> Batch {
    let id = model_id(n);
    Batch::new()
        .with(Mutation::PutModel(ModelRecord {
            permissions: Some(Permissions::ALL),
            next_element_counter: 10,
            ..record(n)
        }))
        .with(Mutation::PutSnapshot { model: id.clone(), snapshot: snapshot(2) })
        .with(Mutation::AppendServerOperations {
            model: id.clone(),
            operations: server_operations(3..=4),
        })
        .with(Mutation::AppendPending { model: id.clone(), operations: pendings(1..=2) })
        .with(Mutation::PutCreation { model: id, creation: creation(n) })
}

// The checks.

async fn new_store_is_empty(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    assert_eq!(store.key(), &key());
    assert!(store.models().await.unwrap().is_empty());
    assert!(store.load_model(&model_id(1)).await.unwrap().is_none());
    assert!(store.subscriptions().await.unwrap().is_empty());
    assert_eq!(store.replica_id().await.unwrap(), None);
    assert_eq!(store.identities().await.unwrap(), Default::default());
}

async fn model_state_round_trips(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    commit(&*store, full_model_batch(1)).await;
    let state = store.load_model(&model_id(1)).await.unwrap().expect("stored");
    assert_eq!(state.summary.record.permissions, Some(Permissions::ALL));
    assert_eq!(state.summary.record.next_element_counter, 10);
    assert_eq!(state.summary.snapshot_version, Some(2));
    assert_eq!(state.summary.confirmed_version, Some(4));
    assert_eq!(state.summary.pending_count, 2);
    assert_eq!(state.summary.last_pending_seq, Some(2));
    assert!(state.summary.has_creation);
    assert!(state.summary.needs_sync());
    assert_eq!(state.snapshot, Some(snapshot(2)));
    assert_eq!(state.server_operations, server_operations(3..=4));
    assert_eq!(state.pending, pendings(1..=2));
    assert_eq!(state.creation, Some(creation(1)));
    assert_eq!(store.models().await.unwrap(), vec![state.summary]);
}

async fn unsynced_lists_only_what_the_server_has_not_confirmed(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    assert_eq!(store.unsynced().await.unwrap(), Default::default());
    // 1: pending operations; 2: in sync; 3: created here, unconfirmed; 4: deleted here
    // (with pending operations); 5: pending operations, all removed once acknowledged; 6:
    // created here, unconfirmed, then deleted here (its creation record kept).
    let in_sync = |n| {
        Batch::new()
            .with(Mutation::PutModel(record(n)))
            .with(Mutation::PutSnapshot { model: model_id(n), snapshot: snapshot(2) })
    };
    let batch = Batch::new()
        .with(Mutation::PutModel(record(1)))
        .with(Mutation::PutSnapshot { model: model_id(1), snapshot: snapshot(2) })
        .with(Mutation::AppendPending { model: model_id(1), operations: pendings(1..=2) });
    commit(&*store, batch).await;
    commit(&*store, in_sync(2)).await;
    commit(&*store, in_sync(5)).await;
    let created = Batch::new()
        .with(Mutation::PutModel(ModelRecord { created_locally: true, ..record(3) }))
        .with(Mutation::PutSnapshot { model: model_id(3), snapshot: snapshot(0) });
    commit(&*store, created).await;
    let deleted = Batch::new()
        .with(Mutation::PutModel(ModelRecord { deleted_locally: true, ..record(4) }))
        .with(Mutation::AppendPending { model: model_id(4), operations: pendings([1]) });
    commit(&*store, deleted).await;
    let acknowledged = Batch::new()
        .with(Mutation::AppendPending { model: model_id(5), operations: pendings([1]) })
        .with(Mutation::RemovePendingThrough { model: model_id(5), through_seq: 1 });
    commit(&*store, acknowledged).await;
    let created_then_deleted = Batch::new()
        .with(Mutation::PutModel(ModelRecord { created_locally: true, ..record(6) }))
        .with(Mutation::PutCreation { model: model_id(6), creation: creation(6) });
    commit(&*store, created_then_deleted).await;
    let mark_deleted = Mutation::PutModel(ModelRecord { deleted_locally: true, ..record(6) });
    commit(&*store, Batch::new().with(mark_deleted)).await;

    let unsynced = store.unsynced().await.unwrap();
    assert_eq!(unsynced.changed, vec![model_id(1), model_id(3)]);
    let tombstone =
        |n, creation| Tombstone { model: model_id(n), collection: collection(), creation };
    let tombstones = vec![tombstone(4, None), tombstone(6, Some(creation(6).nonce))];
    assert_eq!(unsynced.deleted, tombstones, "a kept creation is named");
    // The same as the summaries say.
    let summaries = store.models().await.unwrap();
    let needs_sync: Vec<ModelId> =
        summaries.iter().filter(|m| m.needs_sync()).map(|m| m.record.id.clone()).collect();
    assert_eq!(needs_sync, vec![model_id(1), model_id(3), model_id(4), model_id(6)]);
}

async fn mutations_see_earlier_mutations_of_their_batch(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let id = model_id(1);
    let batch = full_model_batch(1)
        .with(Mutation::RemovePendingThrough { model: id.clone(), through_seq: 1 })
        .with(Mutation::PutSnapshot { model: id.clone(), snapshot: snapshot(3) })
        .with(Mutation::AppendPending { model: id.clone(), operations: pendings([5]) });
    commit(&*store, batch).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.server_operations, server_operations(4..=4));
    assert_eq!(state.pending, pendings([2, 5]));
    assert_eq!(state.summary.pending_count, 2);
    assert_eq!(state.summary.confirmed_version, Some(4));
}

async fn rejected_batch_changes_nothing(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    commit(&*store, full_model_batch(1)).await;
    let before = contents(&*store).await;
    let bad = full_model_batch(2)
        .with(Mutation::Subscribe(vec![model_id(2)]))
        .with(Mutation::SetReplicaId(ReplicaId(9)))
        .with(Mutation::AppendServerOperations {
            model: model_id(1),
            operations: server_operations(9..=9),
        });
    assert_rejected(store.commit(bad).await, 0, 7);
    assert_eq!(contents(&*store).await, before);
}

async fn group_commit_is_all_or_nothing(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let before = contents(&*store).await;
    let bad = Batch::new().with(Mutation::DeleteCreation(model_id(9)));
    let result = store.commit_group(vec![full_model_batch(1), full_model_batch(2), bad]).await;
    assert_rejected(result, 2, 0);
    assert_eq!(contents(&*store).await, before);
    store.commit_group(vec![full_model_batch(1), full_model_batch(2)]).await.unwrap();
    assert_eq!(store.models().await.unwrap().len(), 2);
}

async fn group_commit_applies_in_order(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let id = model_id(1);
    let batches = vec![
        full_model_batch(1),
        Batch::new().with(Mutation::AppendServerOperations {
            model: id.clone(),
            operations: server_operations(5..=6),
        }),
        Batch::new().with(Mutation::AppendServerOperations {
            model: id.clone(),
            operations: server_operations(7..=7),
        }),
    ];
    store.commit_group(batches).await.unwrap();
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.server_operations, server_operations(3..=7));
}

async fn snapshot_compacts_server_operations(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let id = model_id(1);
    commit(&*store, full_model_batch(1)).await;
    let put = |version| Mutation::PutSnapshot { model: id.clone(), snapshot: snapshot(version) };
    commit(&*store, Batch::new().with(put(3))).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.snapshot, Some(snapshot(3)));
    assert_eq!(state.server_operations, server_operations(4..=4));
    assert_eq!(state.summary.snapshot_version, Some(3));
    assert_eq!(state.summary.confirmed_version, Some(4));
    assert_eq!(state.pending, pendings(1..=2), "pending operations are kept");
    // A snapshot past the stored operations replaces everything.
    commit(&*store, Batch::new().with(put(10))).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert!(state.server_operations.is_empty());
    assert_eq!(state.summary.confirmed_version, Some(10));
    // An older snapshot is accepted when no operation follows the current one.
    commit(&*store, Batch::new().with(put(8))).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.summary.confirmed_version, Some(8));
}

async fn snapshot_may_not_open_a_gap(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let id = model_id(1);
    commit(&*store, full_model_batch(1)).await;
    let older =
        Batch::new().with(Mutation::PutSnapshot { model: id.clone(), snapshot: snapshot(1) });
    assert_rejected(store.commit(older).await, 0, 0);
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.snapshot, Some(snapshot(2)));
}

async fn server_operations_must_be_contiguous(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let id = model_id(1);
    commit(&*store, Batch::new().with(Mutation::PutModel(record(1)))).await;
    let append = |versions| {
        Batch::new().with(Mutation::AppendServerOperations {
            model: id.clone(),
            operations: server_operations(versions),
        })
    };
    assert_rejected(store.commit(append(1..=1)).await, 0, 0);
    commit(
        &*store,
        Batch::new().with(Mutation::PutSnapshot { model: id.clone(), snapshot: snapshot(0) }),
    )
    .await;
    assert_rejected(store.commit(append(2..=2)).await, 0, 0);
    let mut shuffled = server_operations(1..=2);
    shuffled.reverse();
    let batch = Batch::new()
        .with(Mutation::AppendServerOperations { model: id.clone(), operations: shuffled });
    assert_rejected(store.commit(batch).await, 0, 0);
    commit(&*store, append(1..=3)).await;
    assert_rejected(store.commit(append(3..=3)).await, 0, 0);
    commit(&*store, append(4..=4)).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.server_operations, server_operations(1..=4));
}

async fn pending_sequence_numbers_are_never_reused(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let id = model_id(1);
    commit(&*store, full_model_batch(1)).await;
    let append = |seqs: Vec<u64>| {
        Batch::new().with(Mutation::AppendPending { model: id.clone(), operations: pendings(seqs) })
    };
    assert_rejected(store.commit(append(vec![2])).await, 0, 0);
    assert_rejected(store.commit(append(vec![4, 3])).await, 0, 0);
    commit(
        &*store,
        Batch::new().with(Mutation::RemovePendingThrough { model: id.clone(), through_seq: 2 }),
    )
    .await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert!(state.pending.is_empty());
    assert_eq!(state.summary.last_pending_seq, Some(2));
    assert!(!state.summary.needs_sync());
    assert_rejected(store.commit(append(vec![1])).await, 0, 0);
    commit(&*store, append(vec![3, 7])).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.pending, pendings([3, 7]));
    assert_eq!(state.summary.last_pending_seq, Some(7));
}

async fn replace_and_remove_pending(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let id = model_id(1);
    commit(&*store, full_model_batch(1)).await;
    let replace =
        |operations| Batch::new().with(Mutation::ReplacePending { model: id.clone(), operations });
    let transformed = vec![PendingOperation::new(1, operation(77)), pending(2)];
    commit(&*store, replace(transformed.clone())).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.pending, transformed);
    assert_rejected(store.commit(replace(pendings([2, 2]))).await, 0, 0);
    commit(
        &*store,
        Batch::new().with(Mutation::RemovePendingThrough { model: id.clone(), through_seq: 1 }),
    )
    .await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.pending, pendings([2]));
    assert_eq!(state.summary.pending_count, 1);
    commit(&*store, replace(Vec::new())).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert!(state.pending.is_empty());
    assert_eq!(state.summary.pending_count, 0);
    assert_eq!(state.summary.last_pending_seq, Some(2));
}

async fn update_pending_in_place(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let id = model_id(1);
    commit(&*store, full_model_batch(1)).await;
    commit(
        &*store,
        Batch::new()
            .with(Mutation::AppendPending { model: id.clone(), operations: pendings(3..=5) }),
    )
    .await;
    let before = store.load_model(&id).await.unwrap().unwrap();
    let update =
        |operations| Batch::new().with(Mutation::UpdatePending { model: id.clone(), operations });
    let rewritten =
        vec![PendingOperation::new(2, operation(71)), PendingOperation::new(4, operation(72))];
    commit(&*store, update(rewritten)).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    let mut expected = before.pending.clone();
    for p in &mut expected {
        match p.seq {
            2 => p.operation = operation(71),
            4 => p.operation = operation(72),
            _ => {}
        }
    }
    assert_eq!(state.pending, expected, "only the named seqs changed");
    assert_eq!(state.summary.pending_count, before.summary.pending_count);
    assert_eq!(state.summary.last_pending_seq, before.summary.last_pending_seq);
    // A seq that is not stored, or seqs out of order, reject the whole batch.
    let unknown = Batch::new()
        .with(Mutation::UpdatePending {
            model: id.clone(),
            operations: vec![PendingOperation::new(3, operation(90))],
        })
        .with(Mutation::UpdatePending { model: id.clone(), operations: pendings([9]) });
    assert_rejected(store.commit(unknown).await, 0, 1);
    assert_rejected(store.commit(update(pendings([4, 3]))).await, 0, 0);
    let after = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(after.pending, expected, "a rejected batch changed nothing");
    assert_rejected(
        store
            .commit(
                Batch::new().with(Mutation::UpdatePending {
                    model: model_id(7),
                    operations: pendings([1]),
                }),
            )
            .await,
        0,
        0,
    );
}

async fn pending_runs_cover_their_seqs(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let id = model_id(1);
    commit(&*store, full_model_batch(1)).await;
    let batch = |mutation| Batch::new().with(mutation);
    let run = |seq, through, n| PendingOperation::run(seq, through, operation(n));
    // 1, 2 stored one by one; a run of 3..=6 is one record.
    let append = |operations| Mutation::AppendPending { model: id.clone(), operations };
    commit(&*store, batch(append(vec![run(3, 6, 30)]))).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.pending, vec![pending(1), pending(2), run(3, 6, 30)]);
    assert_eq!(state.summary.pending_count, 6, "a run counts every seq it covers");
    assert_eq!(state.summary.last_pending_seq, Some(6));
    // A run inside the last one, an empty run and overlapping runs are refused.
    assert_rejected(store.commit(batch(append(vec![run(5, 7, 1)]))).await, 0, 0);
    assert_rejected(store.commit(batch(append(vec![run(8, 7, 1)]))).await, 0, 0);
    assert_rejected(store.commit(batch(append(vec![run(7, 9, 1), run(9, 9, 1)]))).await, 0, 0);
    // Composing 1, 2 and 3..=6 into one run replaces exactly those records.
    let update = |operations| batch(Mutation::UpdatePending { model: id.clone(), operations });
    commit(&*store, update(vec![run(1, 6, 16)])).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.pending, vec![run(1, 6, 16)]);
    assert_eq!(state.summary.pending_count, 6);
    // A run must match the stored seqs exactly: not a part of one, not beyond the last.
    assert_rejected(store.commit(update(vec![run(1, 3, 1)])).await, 0, 0);
    assert_rejected(store.commit(update(vec![run(1, 7, 1)])).await, 0, 0);
    assert_rejected(store.commit(update(vec![run(2, 6, 1)])).await, 0, 0);
    commit(&*store, batch(append(vec![run(7, 7, 17), run(8, 10, 18)]))).await;
    // An acknowledgement never splits a run.
    let remove =
        |through_seq| batch(Mutation::RemovePendingThrough { model: id.clone(), through_seq });
    assert_rejected(store.commit(remove(3)).await, 0, 0);
    assert_rejected(store.commit(remove(9)).await, 0, 0);
    commit(&*store, remove(7)).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.pending, vec![run(8, 10, 18)]);
    assert_eq!(state.summary.pending_count, 3);
    // Replacing the whole list counts seqs too; it survives a reopen.
    let replace = Mutation::ReplacePending { model: id.clone(), operations: vec![run(8, 10, 80)] };
    commit(&*store, batch(replace)).await;
    drop(store);
    let store = open(adapter).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.pending, vec![run(8, 10, 80)]);
    assert_eq!((state.summary.pending_count, state.summary.last_pending_seq), (3, Some(10)));
}

async fn pending_pages(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let id = model_id(1);
    commit(&*store, full_model_batch(1)).await;
    commit(&*store, full_model_batch(2)).await;
    let run = PendingOperation::run(3, 40, operation(3));
    let more = pendings(41..=50);
    let mut operations = vec![run.clone()];
    operations.extend(more.iter().cloned());
    commit(&*store, Batch::new().with(Mutation::AppendPending { model: id.clone(), operations }))
        .await;
    let full = store.load_model(&id).await.unwrap().unwrap();
    // The head is the model without its pending operations.
    let head = store.load_model_head(&id).await.unwrap().unwrap();
    assert_eq!(head.pending, Vec::new());
    assert_eq!(head.summary, full.summary);
    assert_eq!(
        (head.snapshot, head.server_operations, head.creation),
        (full.snapshot.clone(), full.server_operations.clone(), full.creation.clone())
    );
    assert_eq!(store.load_model_head(&model_id(9)).await.unwrap(), None);
    // Pages of 4 records, each after the first seq of the last one read, add up to the list.
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = store.pending_page(&id, after, 4).await.unwrap();
        assert!(page.len() <= 4, "a page holds at most its limit");
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        paged.extend(page);
    }
    assert_eq!(paged, full.pending);
    assert_eq!(paged.len(), 2 + 1 + 10);
    // After a seq inside a run: the records that start later. A zero limit reads one.
    let page = store.pending_page(&id, Some(20), 2).await.unwrap();
    assert_eq!(page, more[..2].to_vec());
    assert_eq!(store.pending_page(&id, None, 0).await.unwrap(), vec![pending(1)]);
    assert_eq!(store.pending_page(&id, Some(50), 4).await.unwrap(), Vec::new());
    assert_eq!(store.pending_page(&id, Some(u64::MAX), 4).await.unwrap(), Vec::new());
    // Another model's records are never in the page.
    let other = store.pending_page(&model_id(2), None, 100).await.unwrap();
    assert_eq!(other, pendings(1..=2));
    assert_eq!(store.pending_page(&model_id(9), None, 4).await.unwrap(), Vec::new());
}

async fn in_flight_boundary(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let id = model_id(1);
    commit(&*store, full_model_batch(1)).await;
    let set =
        |through_seq| Batch::new().with(Mutation::SetInFlight { model: id.clone(), through_seq });
    let in_flight = |state: Option<crate::records::ModelState>| {
        state.expect("stored").summary.in_flight_through
    };
    assert_eq!(in_flight(store.load_model(&id).await.unwrap()), None);
    commit(&*store, set(Some(2))).await;
    assert_eq!(in_flight(store.load_model(&id).await.unwrap()), Some(2));
    drop(store);
    let store = open(adapter).await;
    assert_eq!(in_flight(store.load_model(&id).await.unwrap()), Some(2));
    // Acknowledged: the operations go and the boundary is cleared, in one batch.
    let ack = set(None).with(Mutation::RemovePendingThrough { model: id.clone(), through_seq: 2 });
    commit(&*store, ack).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.summary.in_flight_through, None);
    assert!(state.pending.is_empty());
}

async fn element_counter_never_decreases(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let id = model_id(1);
    commit(&*store, full_model_batch(1)).await;
    let advance =
        |next| Batch::new().with(Mutation::AdvanceElementCounter { model: id.clone(), next });
    commit(&*store, advance(25)).await;
    assert_eq!(counter(&*store, &id).await, 25);
    commit(&*store, advance(5)).await;
    assert_eq!(counter(&*store, &id).await, 25);
    commit(&*store, Batch::new().with(Mutation::PutModel(record(1)))).await;
    assert_eq!(counter(&*store, &id).await, 25, "PutModel keeps the larger counter");
    let raised = ModelRecord { next_element_counter: 40, ..record(1) };
    commit(&*store, Batch::new().with(Mutation::PutModel(raised))).await;
    assert_eq!(counter(&*store, &id).await, 40);
}

async fn counter(store: &dyn OfflineStore, model: &ModelId) -> u64 {
    let state = store.load_model(model).await.unwrap().unwrap();
    state.summary.record.next_element_counter
}

async fn put_model_keeps_data(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    commit(&*store, full_model_batch(1)).await;
    let flagged = ModelRecord { deleted_locally: true, ..record(1) };
    commit(&*store, Batch::new().with(Mutation::PutModel(flagged))).await;
    let state = store.load_model(&model_id(1)).await.unwrap().unwrap();
    assert!(state.summary.record.deleted_locally);
    assert_eq!(state.summary.record.permissions, None);
    assert_eq!(state.snapshot, Some(snapshot(2)));
    assert_eq!(state.server_operations.len(), 2);
    assert_eq!(state.pending.len(), 2);
    assert!(state.creation.is_some());
}

async fn delete_model_removes_everything(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    commit(&*store, full_model_batch(1)).await;
    commit(&*store, full_model_batch(2)).await;
    commit(&*store, Batch::new().with(Mutation::Subscribe(vec![model_id(1)]))).await;
    commit(&*store, Batch::new().with(Mutation::DeleteModel(model_id(1)))).await;
    assert!(store.load_model(&model_id(1)).await.unwrap().is_none());
    let models = store.models().await.unwrap();
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].record.id, model_id(2));
    assert_eq!(
        store.subscriptions().await.unwrap(),
        BTreeSet::from([model_id(1)]),
        "subscriptions are separate"
    );
    // Deleting again is a no-op; a new record starts empty.
    commit(&*store, Batch::new().with(Mutation::DeleteModel(model_id(1)))).await;
    commit(&*store, Batch::new().with(Mutation::PutModel(record(1)))).await;
    let state = store.load_model(&model_id(1)).await.unwrap().unwrap();
    assert_eq!(state.snapshot, None);
    assert!(state.server_operations.is_empty() && state.pending.is_empty());
    assert_eq!(state.creation, None);
    assert_eq!(state.summary.last_pending_seq, None);
    let other = store.load_model(&model_id(2)).await.unwrap().unwrap();
    assert_eq!(other.server_operations.len(), 2);
    assert_eq!(other.pending.len(), 2);
}

async fn mutations_need_a_record(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let id = model_id(1);
    let needing = [
        Mutation::PutSnapshot { model: id.clone(), snapshot: snapshot(0) },
        Mutation::AppendServerOperations { model: id.clone(), operations: Vec::new() },
        Mutation::ReplacePending { model: id.clone(), operations: Vec::new() },
        Mutation::AppendPending { model: id.clone(), operations: pendings([1]) },
        Mutation::RemovePendingThrough { model: id.clone(), through_seq: 1 },
        Mutation::PutCreation { model: id.clone(), creation: creation(1) },
        Mutation::DeleteCreation(id.clone()),
        Mutation::AdvanceElementCounter { model: id.clone(), next: 1 },
    ];
    for mutation in needing {
        let batch = Batch::new().with(Mutation::Subscribe(vec![id.clone()])).with(mutation);
        assert_rejected(store.commit(batch).await, 0, 1);
    }
    assert!(store.subscriptions().await.unwrap().is_empty());
    // A record put and deleted earlier in the batch counts as absent.
    let batch = Batch::new()
        .with(Mutation::PutModel(record(1)))
        .with(Mutation::DeleteModel(id.clone()))
        .with(Mutation::AdvanceElementCounter { model: id, next: 1 });
    assert_rejected(store.commit(batch).await, 0, 2);
    assert!(store.models().await.unwrap().is_empty());
}

async fn creation_records(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let id = model_id(1);
    let created = ModelRecord { created_locally: true, ..record(1) };
    let batch = Batch::new()
        .with(Mutation::PutModel(created.clone()))
        .with(Mutation::PutCreation { model: id.clone(), creation: creation(1) })
        .with(Mutation::AppendPending { model: id.clone(), operations: pendings([1]) });
    commit(&*store, batch).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.creation, Some(creation(1)));
    assert_eq!(state.snapshot, None);
    assert_eq!(state.summary.confirmed_version, None);
    assert!(state.summary.needs_sync());
    // The server confirmed the creation at version 0.
    let confirmed = Batch::new()
        .with(Mutation::PutModel(ModelRecord { created_locally: false, ..created }))
        .with(Mutation::DeleteCreation(id.clone()))
        .with(Mutation::PutSnapshot { model: id.clone(), snapshot: snapshot(0) });
    commit(&*store, confirmed).await;
    let state = store.load_model(&id).await.unwrap().unwrap();
    assert_eq!(state.creation, None);
    assert!(!state.summary.has_creation);
    assert_eq!(state.summary.confirmed_version, Some(0));
    assert_eq!(state.pending, pendings([1]));
}

async fn subscriptions(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let ids = |ns: &[u64]| ns.iter().map(|&n| model_id(n)).collect::<BTreeSet<_>>();
    commit(&*store, Batch::new().with(Mutation::Subscribe(vec![model_id(1), model_id(2)]))).await;
    commit(&*store, Batch::new().with(Mutation::Subscribe(vec![model_id(2), model_id(3)]))).await;
    assert_eq!(store.subscriptions().await.unwrap(), ids(&[1, 2, 3]));
    commit(&*store, Batch::new().with(Mutation::Unsubscribe(vec![model_id(1), model_id(9)]))).await;
    assert_eq!(store.subscriptions().await.unwrap(), ids(&[2, 3]));
    commit(&*store, Batch::new().with(Mutation::SetSubscriptions(ids(&[4, 5])))).await;
    assert_eq!(store.subscriptions().await.unwrap(), ids(&[4, 5]));
    commit(&*store, Batch::new().with(Mutation::SetSubscriptions(BTreeSet::new()))).await;
    assert!(store.subscriptions().await.unwrap().is_empty());
    assert!(store.models().await.unwrap().is_empty(), "no records are made");
}

async fn identities(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let session = |n: u32| SessionId(format!("s{n}"));
    let user = |name: &str| User {
        id: UserId(name.into()),
        display_name: Some(name.to_uppercase()),
        anonymous: false,
    };
    let batch = Batch::new()
        .with(Mutation::PutSessions(vec![
            (session(1), UserId("ann".into())),
            (session(2), UserId("bob".into())),
        ]))
        .with(Mutation::PutUsers(vec![user("ann"), user("bob")]));
    commit(&*store, batch).await;
    let batch = Batch::new()
        .with(Mutation::PutSessions(vec![(session(2), UserId("ann".into()))]))
        .with(Mutation::RemoveSessions(vec![session(1), session(3)]))
        .with(Mutation::PutUsers(vec![User { display_name: None, ..user("bob") }]));
    commit(&*store, batch).await;
    let identity = |name: &str, email: Option<&str>| concord_protocol::Identity {
        user: UserId(name.into()),
        display_name: Some(name.to_uppercase()),
        email: email.map(Into::into),
    };
    let batch = Batch::new().with(Mutation::PutIdentities(vec![
        identity("ann", Some("ann@example.org")),
        identity("bob", None),
    ]));
    commit(&*store, batch).await;
    let batch = Batch::new().with(Mutation::PutIdentities(vec![identity("bob", Some("b@x"))]));
    commit(&*store, batch).await;
    let cache = store.identities().await.unwrap();
    assert_eq!(cache.sessions, BTreeMap::from([(session(2), UserId("ann".into()))]));
    assert_eq!(cache.users.len(), 2);
    assert_eq!(cache.users[&UserId("bob".into())].display_name, None);
    assert_eq!(cache.users[&UserId("ann".into())].display_name.as_deref(), Some("ANN"));
    assert_eq!(cache.identities.len(), 2);
    assert_eq!(cache.identities[&UserId("ann".into())], identity("ann", Some("ann@example.org")));
    assert_eq!(cache.identities[&UserId("bob".into())], identity("bob", Some("b@x")));
}

async fn replica_id_is_set_once(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    let set = |id| Batch::new().with(Mutation::SetReplicaId(ReplicaId(id)));
    commit(&*store, set(42)).await;
    assert_eq!(store.replica_id().await.unwrap(), Some(ReplicaId(42)));
    commit(&*store, set(42)).await;
    assert_rejected(store.commit(set(43)).await, 0, 0);
    assert_eq!(store.replica_id().await.unwrap(), Some(ReplicaId(42)));
}

async fn reopen_keeps_everything(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    commit(&*store, full_model_batch(1)).await;
    let batch = Batch::new()
        .with(Mutation::SetReplicaId(ReplicaId(7)))
        .with(Mutation::Subscribe(vec![model_id(1), model_id(5)]))
        .with(Mutation::PutSessions(vec![(SessionId("s".into()), UserId("u".into()))]));
    commit(&*store, batch).await;
    let before = contents(&*store).await;
    drop(store);
    let store = open(adapter).await;
    assert_eq!(contents(&*store).await, before);
}

async fn second_open_is_in_use(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    commit(&*store, full_model_batch(1)).await;
    match adapter.open(&key()).await {
        Err(StorageError::InUse { .. }) => {}
        other => panic!("expected InUse, got {other:?}"),
    }
    assert_eq!(store.models().await.unwrap().len(), 1, "the first handle works on");
    drop(store);
    let store = open(adapter).await;
    assert_eq!(store.models().await.unwrap().len(), 1);
}

async fn stores_are_separate_per_key(adapter: &dyn StorageAdapter) {
    let alice = open(adapter).await;
    let bob_key = StoreKey::new(key().server, "bob");
    let other_server = StoreKey::new("wss://other.test", key().user);
    let bob = adapter.open(&bob_key).await.unwrap();
    let other = adapter.open(&other_server).await.unwrap();
    commit(&*alice, full_model_batch(1)).await;
    commit(&*bob, Batch::new().with(Mutation::SetReplicaId(ReplicaId(2)))).await;
    assert_eq!(bob.key(), &bob_key);
    assert!(bob.models().await.unwrap().is_empty());
    assert!(other.models().await.unwrap().is_empty());
    assert_eq!(alice.replica_id().await.unwrap(), None);
    assert_eq!(bob.replica_id().await.unwrap(), Some(ReplicaId(2)));
}

async fn destroy_removes_the_store(adapter: &dyn StorageAdapter) {
    adapter.destroy(&key()).await.expect("destroying nothing succeeds");
    let store = open(adapter).await;
    commit(&*store, full_model_batch(1)).await;
    match adapter.destroy(&key()).await {
        Err(StorageError::InUse { .. }) => {}
        other => panic!("expected InUse, got {other:?}"),
    }
    assert_eq!(store.models().await.unwrap().len(), 1);
    drop(store);
    adapter.destroy(&key()).await.unwrap();
    let store = open(adapter).await;
    assert!(store.models().await.unwrap().is_empty());
}

async fn empty_commits_are_no_ops(adapter: &dyn StorageAdapter) {
    let store = open(adapter).await;
    commit(&*store, Batch::new()).await;
    store.commit_group(Vec::new()).await.unwrap();
    store.commit_group(vec![Batch::new(), Batch::new()]).await.unwrap();
    assert!(store.models().await.unwrap().is_empty());
}

/// Something in every table except the replica id: models 1 and 2 with all their data,
/// subscriptions, sessions and users.
async fn fill(store: &dyn OfflineStore) {
    commit(store, full_model_batch(1)).await;
    commit(store, full_model_batch(2)).await;
    let batch = Batch::new()
        .with(Mutation::Subscribe(vec![model_id(1), model_id(5)]))
        .with(Mutation::PutSessions(vec![(SessionId("s1".into()), UserId("ann".into()))]))
        .with(Mutation::PutUsers(vec![User {
            id: UserId("ann".into()),
            display_name: Some("Ann".into()),
            anonymous: false,
        }]));
    commit(store, batch).await;
}

/// A batch that changes every table after [`fill`]: the one made to fail.
fn sweeping_batch() -> Batch {
    let one = model_id(1);
    let mut batch = Batch::new()
        .with(Mutation::AppendServerOperations {
            model: one.clone(),
            operations: server_operations(5..=6),
        })
        .with(Mutation::PutSnapshot { model: one.clone(), snapshot: snapshot(5) })
        .with(Mutation::AppendPending { model: one.clone(), operations: pendings([3]) })
        .with(Mutation::RemovePendingThrough { model: one.clone(), through_seq: 1 })
        .with(Mutation::SetInFlight { model: one.clone(), through_seq: Some(2) })
        .with(Mutation::DeleteCreation(one.clone()))
        .with(Mutation::AdvanceElementCounter { model: one.clone(), next: 99 })
        .with(Mutation::DeleteModel(model_id(2)))
        .with(Mutation::Subscribe(vec![model_id(9)]))
        .with(Mutation::Unsubscribe(vec![one]))
        .with(Mutation::PutSessions(vec![(SessionId("s2".into()), UserId("bob".into()))]))
        .with(Mutation::RemoveSessions(vec![SessionId("s1".into())]))
        .with(Mutation::PutUsers(vec![User {
            id: UserId("bob".into()),
            display_name: None,
            anonymous: true,
        }]))
        .with(Mutation::SetReplicaId(ReplicaId(7)));
    batch.mutations.extend(full_model_batch(3).mutations);
    batch
}

/// The contents [`fill`] and then [`sweeping_batch`] give, from a store of another key.
async fn swept_contents(adapter: &dyn StorageAdapter) -> Contents {
    let reference = adapter.open(&StoreKey::new("wss://reference.test", "ann")).await.unwrap();
    fill(&*reference).await;
    commit(&*reference, sweeping_batch()).await;
    contents(&*reference).await
}

async fn failed_commit_changes_nothing(adapter: &dyn StorageAdapter) {
    let expected = swept_contents(adapter).await;
    let adapter = FaultyAdapter::new(adapter);
    let faults = adapter.faults().clone();
    let store = open(&adapter).await;
    fill(&*store).await;
    let before = contents(&*store).await;
    assert_ne!(before, expected);
    // The next commit, alone or in a group, fails: nothing of it is applied.
    faults.fail_next(Fault::Clean);
    assert_injected(store.commit(sweeping_batch()).await, Fault::Clean);
    assert_eq!(contents(&*store).await, before);
    faults.fail_next(Fault::Clean);
    let second = Batch::new().with(Mutation::Subscribe(vec![model_id(8)]));
    assert_injected(store.commit_group(vec![sweeping_batch(), second]).await, Fault::Clean);
    assert_eq!(contents(&*store).await, before);
    // The third commit from now fails; the two before it are applied.
    faults.fail_nth(3, Fault::Clean);
    commit(&*store, Batch::new().with(Mutation::Subscribe(vec![model_id(8)]))).await;
    commit(&*store, Batch::new().with(Mutation::Unsubscribe(vec![model_id(8)]))).await;
    assert_injected(store.commit(sweeping_batch()).await, Fault::Clean);
    assert_eq!(contents(&*store).await, before);
    // Every commit, until healed.
    faults.fail_every(Fault::Clean);
    for _ in 0..3 {
        assert_injected(store.commit(sweeping_batch()).await, Fault::Clean);
    }
    assert_eq!(contents(&*store).await, before);
    faults.heal();
    assert_eq!((faults.commits(), faults.injected()), (11, 6));
    // A batch the store rejects is still rejected as such, not hidden by the fault.
    faults.fail_next(Fault::Clean);
    let bad = Batch::new().with(Mutation::DeleteCreation(model_id(9)));
    assert_rejected(store.commit_group(vec![Batch::new(), bad]).await, 1, 0);
    // Later commits work: the same batch applies whole, and a reopen sees it.
    commit(&*store, sweeping_batch()).await;
    assert_eq!(contents(&*store).await, expected);
    drop(store);
    assert_eq!(contents(&*open(&adapter).await).await, expected);
}

async fn in_doubt_commit_is_applied(adapter: &dyn StorageAdapter) {
    let expected = swept_contents(adapter).await;
    let adapter = FaultyAdapter::new(adapter);
    let faults = adapter.faults().clone();
    let store = open(&adapter).await;
    fill(&*store).await;
    faults.fail_next(Fault::InDoubt);
    assert_injected(store.commit(sweeping_batch()).await, Fault::InDoubt);
    assert_eq!(contents(&*store).await, expected, "reported failed, yet applied whole");
    // A rejected batch is a rejection: nothing applied, whatever was planned.
    faults.fail_next(Fault::InDoubt);
    let other_replica = Batch::new().with(Mutation::SetReplicaId(ReplicaId(8)));
    assert_rejected(store.commit(other_replica).await, 0, 0);
    assert_eq!(contents(&*store).await, expected);
    drop(store);
    assert_eq!(contents(&*open(&adapter).await).await, expected);
}

async fn crash_keeps_what_was_applied(adapter: &dyn StorageAdapter) {
    let expected = swept_contents(adapter).await;
    let adapter = FaultyAdapter::new(adapter);
    let faults = adapter.faults().clone();
    let store = open(&adapter).await;
    fill(&*store).await;
    let returned = contents(&*store).await;
    faults.fail_next(Fault::Clean);
    assert_injected(store.commit(sweeping_batch()).await, Fault::Clean);
    faults.crash();
    // The crashed handle is dead, and no longer holds the store.
    assert!(matches!(store.models().await, Err(StorageError::Closed)));
    assert!(matches!(store.load_model(&model_id(1)).await, Err(StorageError::Closed)));
    assert!(matches!(store.commit(full_model_batch(4)).await, Err(StorageError::Closed)));
    let reopened = open(&adapter).await;
    assert_eq!(contents(&*reopened).await, returned, "only the returned commits");
    // An in-doubt commit was applied before the crash: it is there after it.
    faults.fail_next(Fault::InDoubt);
    assert_injected(reopened.commit(sweeping_batch()).await, Fault::InDoubt);
    faults.crash();
    drop((store, reopened));
    assert_eq!(contents(&*open(&adapter).await).await, expected);
    assert_eq!(faults.crashes(), 2);
}
