//! Property test: random sequences of batches (valid and invalid, single and grouped), with
//! the store closed and reopened in between, against a plain in-memory model of what the
//! store must contain. After every step the store's whole contents must equal the model's.

// Native only: the browser runs the suite in tests/indexeddb.rs.
#![cfg(not(target_arch = "wasm32"))]

use std::collections::{BTreeMap, BTreeSet};

use concord_ot::ReplicaId;
use concord_protocol::{CommittedOperation, ModelId, SessionId, User, UserId};
use concord_storage::contract::{
    collection, creation, key, model_id, operation, server_operation, snapshot,
};
use concord_storage::{
    Batch, CreationRecord, IdentityCache, MemoryAdapter, ModelRecord, ModelState, ModelSummary,
    Mutation, OfflineStore, PendingOperation, Snapshot, StorageAdapter, StorageError,
};
use proptest::prelude::*;

/// What the store must hold for one model.
#[derive(Debug, Clone)]
struct Expected {
    record: ModelRecord,
    snapshot: Option<Snapshot>,
    server_operations: Vec<CommittedOperation>,
    pending: Vec<PendingOperation>,
    last_pending_seq: Option<u64>,
    in_flight: Option<u64>,
    creation: Option<CreationRecord>,
}

impl Expected {
    fn confirmed(&self) -> Option<u64> {
        match self.server_operations.last() {
            Some(op) => Some(op.version),
            None => self.snapshot.as_ref().map(|s| s.version),
        }
    }

    fn state(&self) -> ModelState {
        ModelState {
            summary: ModelSummary {
                record: self.record.clone(),
                snapshot_version: self.snapshot.as_ref().map(|s| s.version),
                confirmed_version: self.confirmed(),
                pending_count: self.pending.len() as u64,
                last_pending_seq: self.last_pending_seq,
                in_flight_through: self.in_flight,
                has_creation: self.creation.is_some(),
            },
            snapshot: self.snapshot.clone(),
            server_operations: self.server_operations.clone(),
            pending: self.pending.clone(),
            creation: self.creation.clone(),
        }
    }
}

/// The plain model of a store's contents.
#[derive(Debug, Clone, Default)]
struct Model {
    models: BTreeMap<ModelId, Expected>,
    subscriptions: BTreeSet<ModelId>,
    replica: Option<ReplicaId>,
    identities: IdentityCache,
}

fn increasing(ops: &[PendingOperation], after: Option<u64>) -> bool {
    let mut last = after;
    ops.iter().all(|op| {
        let ok = last.is_none_or(|last| op.seq > last);
        last = Some(op.seq);
        ok
    })
}

impl Model {
    /// Applies one mutation; `false` if the store must reject it.
    fn apply(&mut self, mutation: &Mutation) -> bool {
        let model = match mutation {
            Mutation::PutModel(record) => {
                match self.models.get_mut(&record.id) {
                    Some(m) => {
                        let counter =
                            m.record.next_element_counter.max(record.next_element_counter);
                        m.record = record.clone();
                        m.record.next_element_counter = counter;
                    }
                    None => {
                        self.models.insert(
                            record.id.clone(),
                            Expected {
                                record: record.clone(),
                                snapshot: None,
                                server_operations: Vec::new(),
                                pending: Vec::new(),
                                last_pending_seq: None,
                                in_flight: None,
                                creation: None,
                            },
                        );
                    }
                }
                return true;
            }
            Mutation::DeleteModel(id) => {
                self.models.remove(id);
                return true;
            }
            Mutation::SetSubscriptions(ids) => {
                self.subscriptions = ids.clone();
                return true;
            }
            Mutation::Subscribe(ids) => {
                self.subscriptions.extend(ids.iter().cloned());
                return true;
            }
            Mutation::Unsubscribe(ids) => {
                for id in ids {
                    self.subscriptions.remove(id);
                }
                return true;
            }
            Mutation::PutSessions(entries) => {
                self.identities.sessions.extend(entries.iter().cloned());
                return true;
            }
            Mutation::RemoveSessions(sessions) => {
                for s in sessions {
                    self.identities.sessions.remove(s);
                }
                return true;
            }
            Mutation::PutUsers(users) => {
                for u in users {
                    self.identities.users.insert(u.id.clone(), u.clone());
                }
                return true;
            }
            Mutation::PutIdentities(identities) => {
                for i in identities {
                    self.identities.identities.insert(i.user.clone(), i.clone());
                }
                return true;
            }
            Mutation::SetReplicaId(id) => {
                if self.replica.is_some_and(|r| r != *id) {
                    return false;
                }
                self.replica = Some(*id);
                return true;
            }
            other => other.model().unwrap(),
        };
        let Some(m) = self.models.get_mut(model) else {
            return false;
        };
        match mutation {
            Mutation::PutSnapshot { snapshot, .. } => {
                let v = snapshot.version;
                let old = m.snapshot.as_ref().map(|s| s.version);
                if !m.server_operations.is_empty() && old.is_some_and(|old| v < old) {
                    return false;
                }
                m.snapshot = Some(snapshot.clone());
                m.server_operations.retain(|op| op.version > v);
            }
            Mutation::AppendServerOperations { operations, .. } => {
                if operations.is_empty() {
                    return true;
                }
                let Some(mut confirmed) = m.confirmed() else {
                    return false;
                };
                for op in operations {
                    if op.version != confirmed + 1 {
                        return false;
                    }
                    confirmed = op.version;
                }
                m.server_operations.extend(operations.iter().cloned());
            }
            Mutation::ReplacePending { operations, .. } => {
                if !increasing(operations, None) {
                    return false;
                }
                m.pending = operations.clone();
                if let Some(last) = operations.last() {
                    m.last_pending_seq = m.last_pending_seq.max(Some(last.seq));
                }
            }
            Mutation::AppendPending { operations, .. } => {
                if !increasing(operations, m.last_pending_seq) {
                    return false;
                }
                m.pending.extend(operations.iter().cloned());
                if let Some(last) = operations.last() {
                    m.last_pending_seq = Some(last.seq);
                }
            }
            Mutation::RemovePendingThrough { through_seq, .. } => {
                m.pending.retain(|op| op.seq > *through_seq);
            }
            Mutation::SetInFlight { through_seq, .. } => m.in_flight = *through_seq,
            Mutation::PutCreation { creation, .. } => m.creation = Some(creation.clone()),
            Mutation::DeleteCreation(_) => m.creation = None,
            Mutation::AdvanceElementCounter { next, .. } => {
                m.record.next_element_counter = m.record.next_element_counter.max(*next);
            }
            _ => unreachable!("handled above"),
        }
        true
    }

    /// Applies batches as one group; all or nothing. `false` if the store must reject it.
    fn apply_group(&mut self, batches: &[Batch]) -> bool {
        let mut next = self.clone();
        let ok = batches.iter().flat_map(|b| &b.mutations).all(|m| next.apply(m));
        if ok {
            *self = next;
        }
        ok
    }
}

#[derive(Debug, Clone)]
enum Step {
    Commit(Batch),
    Group(Vec<Batch>),
    Reopen,
}

fn arb_model() -> impl Strategy<Value = ModelId> {
    (0u64..3).prop_map(model_id)
}

/// Mostly increasing sequence numbers (a step of 0 makes a duplicate); [`resolve`] shifts
/// most lists to start just after the model's last one.
fn arb_pending() -> impl Strategy<Value = Vec<PendingOperation>> {
    prop::collection::vec((0u64..3, 0u64..4), 0..4).prop_map(|v| {
        let mut seq = 0;
        v.into_iter()
            .map(|(step, n)| {
                seq += step;
                PendingOperation::new(seq, operation(n))
            })
            .collect()
    })
}

fn arb_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (0u64..3, any::<bool>(), any::<bool>(), 0u64..20).prop_map(|(n, c, d, counter)| {
            Mutation::PutModel(ModelRecord {
                created_locally: c,
                deleted_locally: d,
                next_element_counter: counter,
                ..ModelRecord::new(model_id(n), collection())
            })
        }),
        1 => arb_model().prop_map(Mutation::DeleteModel),
        2 => (arb_model(), 0u64..8).prop_map(|(model, v)| Mutation::PutSnapshot {
            model,
            snapshot: snapshot(v),
        }),
        3 => (arb_model(), 0u64..10, 0u64..4).prop_map(|(model, first, len)| {
            Mutation::AppendServerOperations {
                model,
                operations: (first..first + len).map(server_operation).collect(),
            }
        }),
        2 => (arb_model(), arb_pending())
            .prop_map(|(model, operations)| Mutation::ReplacePending { model, operations }),
        3 => (arb_model(), arb_pending())
            .prop_map(|(model, operations)| Mutation::AppendPending { model, operations }),
        2 => (arb_model(), 0u64..12).prop_map(|(model, through_seq)| {
            Mutation::RemovePendingThrough { model, through_seq }
        }),
        1 => (arb_model(), 0u64..3).prop_map(|(model, n)| Mutation::PutCreation {
            model,
            creation: creation(n),
        }),
        1 => arb_model().prop_map(Mutation::DeleteCreation),
        1 => (arb_model(), prop::option::of(0u64..12))
            .prop_map(|(model, through_seq)| Mutation::SetInFlight { model, through_seq }),
        1 => (arb_model(), 0u64..30)
            .prop_map(|(model, next)| Mutation::AdvanceElementCounter { model, next }),
        1 => prop::collection::btree_set(0u64..5, 0..3)
            .prop_map(|ns| Mutation::SetSubscriptions(ns.into_iter().map(model_id).collect())),
        1 => prop::collection::vec(0u64..5, 0..3)
            .prop_map(|ns| Mutation::Subscribe(ns.into_iter().map(model_id).collect())),
        1 => prop::collection::vec(0u64..5, 0..3)
            .prop_map(|ns| Mutation::Unsubscribe(ns.into_iter().map(model_id).collect())),
        1 => prop::collection::vec((0u8..4, 0u8..3), 0..3).prop_map(|v| {
            Mutation::PutSessions(
                v.into_iter()
                    .map(|(s, u)| (SessionId(format!("s{s}")), UserId(format!("u{u}"))))
                    .collect(),
            )
        }),
        1 => prop::collection::vec(0u8..4, 0..3).prop_map(|v| {
            Mutation::RemoveSessions(v.into_iter().map(|s| SessionId(format!("s{s}"))).collect())
        }),
        1 => prop::collection::vec((0u8..3, any::<bool>()), 0..3).prop_map(|v| {
            Mutation::PutUsers(
                v.into_iter()
                    .map(|(u, named)| User {
                        id: UserId(format!("u{u}")),
                        display_name: named.then(|| format!("User {u}")),
                        anonymous: !named,
                    })
                    .collect(),
            )
        }),
        1 => prop::collection::vec((0u8..3, any::<bool>()), 0..3).prop_map(|v| {
            Mutation::PutIdentities(
                v.into_iter()
                    .map(|(u, email)| concord_protocol::Identity {
                        user: UserId(format!("u{u}")),
                        display_name: Some(format!("User {u}")),
                        email: email.then(|| format!("u{u}@example.org")),
                    })
                    .collect(),
            )
        }),
        1 => (1u64..3).prop_map(|r| Mutation::SetReplicaId(ReplicaId(r))),
    ]
}

/// Rewrites a generated mutation against the state it will meet, so that valid appends are
/// common: server operations whose first version is below 7 are renumbered to follow the
/// confirmed version, and pending lists whose first seq is below 2 to follow the last seq.
/// The others keep their (probably invalid) numbers.
fn resolve(model: &Model, mutation: Mutation) -> Mutation {
    match mutation {
        Mutation::AppendServerOperations { model: id, operations } => {
            let confirmed = model.models.get(&id).and_then(Expected::confirmed);
            let operations = match (operations.first(), confirmed) {
                (Some(first), Some(c)) if first.version < 7 => {
                    let shift = c + 1 - first.version.min(c + 1);
                    operations.iter().map(|op| server_operation(op.version + shift)).collect()
                }
                _ => operations,
            };
            Mutation::AppendServerOperations { model: id, operations }
        }
        Mutation::AppendPending { model: id, operations } => {
            let last = model.models.get(&id).and_then(|m| m.last_pending_seq);
            let operations = match operations.first() {
                Some(first) if first.seq < 2 => {
                    let base = last.map_or(1, |l| l + 1);
                    operations
                        .into_iter()
                        .map(|op| PendingOperation {
                            seq: op.seq + base,
                            through: op.through + base,
                            ..op
                        })
                        .collect()
                }
                _ => operations,
            };
            Mutation::AppendPending { model: id, operations }
        }
        other => other,
    }
}

/// Resolves every mutation of `batches` against the state the earlier ones leave.
fn resolve_all(model: &Model, batches: &[Batch]) -> Vec<Batch> {
    let mut scratch = model.clone();
    batches
        .iter()
        .map(|batch| {
            batch
                .mutations
                .iter()
                .map(|m| {
                    let m = resolve(&scratch, m.clone());
                    scratch.apply(&m);
                    m
                })
                .collect()
        })
        .collect()
}

fn arb_batch() -> impl Strategy<Value = Batch> {
    prop::collection::vec(arb_mutation(), 0..6).prop_map(Batch::from)
}

fn arb_steps(max: usize) -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        prop_oneof![
            6 => arb_batch().prop_map(Step::Commit),
            2 => prop::collection::vec(arb_batch(), 0..4).prop_map(Step::Group),
            1 => Just(Step::Reopen),
        ],
        1..max,
    )
}

fn assert_matches(store: &dyn OfflineStore, model: &Model) {
    use pollster::block_on;
    let summaries: Vec<ModelSummary> = model.models.values().map(|m| m.state().summary).collect();
    assert_eq!(block_on(store.models()).unwrap(), summaries);
    for (id, expected) in &model.models {
        assert_eq!(block_on(store.load_model(id)).unwrap(), Some(expected.state()));
    }
    for n in 0..3 {
        if !model.models.contains_key(&model_id(n)) {
            assert_eq!(block_on(store.load_model(&model_id(n))).unwrap(), None);
        }
    }
    assert_eq!(block_on(store.subscriptions()).unwrap(), model.subscriptions);
    assert_eq!(block_on(store.replica_id()).unwrap(), model.replica);
    assert_eq!(block_on(store.identities()).unwrap(), model.identities);
}

fn run(adapter: &dyn StorageAdapter, steps: &[Step]) {
    use pollster::block_on;
    let mut model = Model::default();
    let mut store = block_on(adapter.open(&key())).unwrap();
    for step in steps {
        let (expected_ok, result) = match step {
            Step::Commit(batch) => {
                let batch = resolve_all(&model, std::slice::from_ref(batch)).remove(0);
                (model.apply_group(std::slice::from_ref(&batch)), block_on(store.commit(batch)))
            }
            Step::Group(batches) => {
                let batches = resolve_all(&model, batches);
                (model.apply_group(&batches), block_on(store.commit_group(batches)))
            }
            Step::Reopen => {
                drop(store);
                store = block_on(adapter.open(&key())).unwrap();
                (true, Ok(()))
            }
        };
        match result {
            Ok(()) => assert!(expected_ok, "the store accepted what it must reject: {step:?}"),
            Err(StorageError::InvalidBatch { .. }) => {
                assert!(!expected_ok, "the store rejected a valid step: {step:?}: {result:?}")
            }
            Err(other) => panic!("{step:?}: {other}"),
        }
        assert_matches(&*store, &model);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn memory_store_matches_the_model(steps in arb_steps(40)) {
        run(&MemoryAdapter::new(), &steps);
    }
}

#[cfg(feature = "redb")]
proptest! {
    // Every commit is fsynced: fewer, shorter cases.
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn redb_store_matches_the_model(steps in arb_steps(25)) {
        let dir = tempfile::tempdir().unwrap();
        run(&concord_storage::RedbAdapter::new(dir.path()), &steps);
    }
}
