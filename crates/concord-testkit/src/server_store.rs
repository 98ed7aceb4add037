//! An in-memory server store: what a server has made durable, as the simulation's disk.
//! It applies the hosts' [`Write`]s as the server's redb store does and answers the same
//! reads, for one domain.

use std::collections::{BTreeMap, BTreeSet};

use concord_ot::ReplicaId;
use concord_protocol::{
    CollectionId, Commit, CommittedOperation, ModelId, ModelSnapshot, User, UserId,
};
use concord_sync::Decision;
use concord_sync::host::{CollectionConfig, Loaded, ModelRecord, StoredModel, Write};

/// Everything a server has made durable.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemoryServerStore {
    models: BTreeMap<ModelId, (ModelRecord, ModelSnapshot)>,
    /// Every committed operation, by model and version (snapshots do not compact them).
    operations: BTreeMap<ModelId, BTreeMap<u64, CommittedOperation>>,
    /// The last decided `(seq, decision)` per model and replica.
    replicas: BTreeMap<ModelId, BTreeMap<ReplicaId, (u64, Decision)>>,
    deleted: BTreeSet<ModelId>,
    collections: BTreeMap<CollectionId, CollectionConfig>,
    users: BTreeMap<UserId, User>,
    replica_owners: BTreeMap<ReplicaId, UserId>,
}

impl MemoryServerStore {
    pub fn new() -> MemoryServerStore {
        MemoryServerStore::default()
    }

    pub fn apply(&mut self, write: &Write) {
        match write {
            Write::CreateModel { model, record, snapshot } => {
                self.models.insert(model.clone(), (record.clone(), snapshot.clone()));
            }
            Write::Commit(record) => {
                let version = record.operation.version;
                let operations = self.operations.entry(record.model.clone()).or_default();
                operations.insert(version, record.operation.clone());
                let commit = Commit { version, timestamp: record.operation.timestamp };
                let replicas = self.replicas.entry(record.model.clone()).or_default();
                replicas.insert(record.replica, (record.seq, Decision::Committed(commit)));
            }
            Write::Refusal(record) => {
                let replicas = self.replicas.entry(record.model.clone()).or_default();
                replicas.insert(record.replica, (record.seq, Decision::Refused(record.code)));
            }
            Write::Snapshot { model, snapshot } => {
                if let Some((_, stored)) = self.models.get_mut(model) {
                    *stored = snapshot.clone();
                }
            }
            Write::SetGrants { model, record } => {
                if let Some((stored, _)) = self.models.get_mut(model) {
                    *stored = record.clone();
                }
            }
            Write::DeleteModel { model, .. } => {
                self.models.remove(model);
                self.operations.remove(model);
                self.replicas.remove(model);
                self.deleted.insert(model.clone());
            }
            Write::PutCollection { collection, config } => {
                self.collections.insert(collection.clone(), config.clone());
            }
            Write::PutUser { user } => {
                self.users.insert(user.id.clone(), user.clone());
            }
            Write::BindReplica { replica, user } => {
                self.replica_owners.entry(*replica).or_insert_with(|| user.clone());
            }
        }
    }

    pub fn load(&self, model: &ModelId) -> Loaded {
        let Some((record, snapshot)) = self.models.get(model) else {
            return Loaded::Absent { deleted: self.deleted.contains(model) };
        };
        let operations = self.operations(model, snapshot.version, u64::MAX, usize::MAX);
        Loaded::Model(Box::new(StoredModel {
            record: record.clone(),
            collection: self.collections.get(&record.collection).cloned(),
            snapshot: snapshot.clone(),
            operations,
            last_decisions: self.replicas.get(model).cloned().unwrap_or_default(),
        }))
    }

    /// The committed operations in `(after, through]`, at most `limit` of them.
    pub fn operations(
        &self,
        model: &ModelId,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Vec<CommittedOperation> {
        let Some(operations) = self.operations.get(model) else { return Vec::new() };
        if after >= through {
            return Vec::new();
        }
        operations.range(after + 1..=through).take(limit).map(|(_, op)| op.clone()).collect()
    }

    /// What the store keeps about `model` besides its data, while it exists.
    pub fn record(&self, model: &ModelId) -> Option<&ModelRecord> {
        self.models.get(model).map(|(record, _)| record)
    }

    /// The user `replica` is bound to.
    pub fn replica_owner(&self, replica: ReplicaId) -> Option<UserId> {
        self.replica_owners.get(&replica).cloned()
    }

    pub fn collection(&self, collection: &CollectionId) -> Option<CollectionConfig> {
        self.collections.get(collection).cloned()
    }

    /// The models that exist.
    pub fn models(&self) -> impl Iterator<Item = &ModelId> {
        self.models.keys()
    }

    pub fn exists(&self, model: &ModelId) -> bool {
        self.models.contains_key(model)
    }

    pub fn is_deleted(&self, model: &ModelId) -> bool {
        self.deleted.contains(model)
    }

    /// The last seq of `replica` the server decided on `model` (committed or refused).
    pub fn last_seq(&self, model: &ModelId, replica: ReplicaId) -> Option<u64> {
        self.last_decision(model, replica).map(|(seq, _)| seq)
    }

    /// The last seq of `replica` the server decided on `model`, and what it decided.
    pub fn last_decision(&self, model: &ModelId, replica: ReplicaId) -> Option<(u64, Decision)> {
        self.replicas.get(model)?.get(&replica).copied()
    }
}
