//! An in-memory server store: what a server has made durable, as the simulation's disk.
//! It applies the hosts' [`Write`]s as the server's redb store does and answers the same
//! reads, for one domain.

use std::collections::{BTreeMap, BTreeSet};

use concord_ot::ReplicaId;
use concord_protocol::{
    CollectionId, Commit, CommittedOperation, Identity, ModelId, ModelSnapshot, User, UserId,
};
use concord_protocol::{HistoryOperation, ServerMessage, Timestamp};
use concord_query::{Direction, IndexScan, Path};
use concord_sync::Decision;
use concord_sync::host::{
    CollectionConfig, HistoryRead, HistorySource, HostConfig, Loaded, ModelRecord, QueryEntry,
    QueryLimits, QueryModelData, QueryRead, QuerySource, ReadFailure, StoredModel, Write,
    history_reply, query_reply,
};

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
    /// Every checkpoint (the model as created, then every snapshot), by model and version.
    checkpoints: BTreeMap<ModelId, BTreeMap<u64, ModelSnapshot>>,
    /// The user of each committed operation, by model and version.
    operation_users: BTreeMap<ModelId, BTreeMap<u64, UserId>>,
    /// Each user's identity as last learned, and when (`Write::PutIdentity`).
    identities: BTreeMap<UserId, (Identity, Timestamp)>,
    /// Each model's keys in its collection's indexes (`Write::IndexModel`).
    index_keys: BTreeMap<ModelId, Vec<(Path, Vec<u8>)>>,
}

impl MemoryServerStore {
    pub fn new() -> MemoryServerStore {
        MemoryServerStore::default()
    }

    pub fn apply(&mut self, write: &Write) {
        match write {
            Write::CreateModel { model, record, snapshot } => {
                self.models.insert(model.clone(), (record.clone(), snapshot.clone()));
                let checkpoints = self.checkpoints.entry(model.clone()).or_default();
                checkpoints.insert(snapshot.version, snapshot.clone());
            }
            Write::Commit(record) => {
                let version = record.operation.version;
                let operations = self.operations.entry(record.model.clone()).or_default();
                operations.insert(version, record.operation.clone());
                let commit = Commit { version, timestamp: record.operation.timestamp };
                let replicas = self.replicas.entry(record.model.clone()).or_default();
                replicas.insert(record.replica, (record.seq, Decision::Committed(commit)));
                if let Some(user) = self.replica_owners.get(&record.replica) {
                    let users = self.operation_users.entry(record.model.clone()).or_default();
                    users.insert(version, user.clone());
                }
            }
            Write::Refusal(record) => {
                let replicas = self.replicas.entry(record.model.clone()).or_default();
                replicas.insert(record.replica, (record.seq, Decision::Refused(record.code)));
            }
            Write::Snapshot { model, snapshot } => {
                if let Some((_, stored)) = self.models.get_mut(model) {
                    *stored = snapshot.clone();
                    let checkpoints = self.checkpoints.entry(model.clone()).or_default();
                    checkpoints.insert(snapshot.version, snapshot.clone());
                }
            }
            Write::SetGrants { model, record } => {
                if let Some((stored, _)) = self.models.get_mut(model) {
                    *stored = record.clone();
                }
            }
            Write::IndexModel { model, keys, .. } => {
                self.index_keys.insert(model.clone(), keys.clone());
            }
            Write::DeleteModel { model, .. } => {
                self.index_keys.remove(model);
                self.models.remove(model);
                self.operations.remove(model);
                self.replicas.remove(model);
                self.checkpoints.remove(model);
                self.operation_users.remove(model);
                self.deleted.insert(model.clone());
            }
            Write::PutCollection { collection, config } => {
                self.collections.insert(collection.clone(), config.clone());
            }
            Write::PutUser { user } => {
                self.users.insert(user.id.clone(), user.clone());
            }
            Write::PutIdentity { identity, seen } => {
                self.identities.insert(identity.user.clone(), (identity.clone(), *seen));
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
        let users = self.operation_users.get(model);
        let authors = operations
            .iter()
            .filter_map(|op| Some((op.author.clone(), users?.get(&op.version)?.clone())))
            .collect();
        Loaded::Model(Box::new(StoredModel {
            record: record.clone(),
            collection: self.collections.get(&record.collection).cloned(),
            snapshot: snapshot.clone(),
            operations,
            last_decisions: self.replicas.get(model).cloned().unwrap_or_default(),
            authors,
        }))
    }

    /// The identity stored for `user`, and when it was learned.
    pub fn identity(&self, user: &UserId) -> Option<&(Identity, Timestamp)> {
        self.identities.get(user)
    }

    /// The committed operations in `(after, through]`, at most `limit` of them, each with
    /// its user where stored.
    pub fn operations_with_users(
        &self,
        model: &ModelId,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Vec<HistoryOperation> {
        let users = self.operation_users.get(model);
        let operations = self.operations(model, after, through, limit);
        operations
            .into_iter()
            .map(|operation| {
                let user = users.and_then(|u| u.get(&operation.version)).cloned();
                HistoryOperation { operation, user }
            })
            .collect()
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

    /// The answer to a history request the model host accepted, as the server's store gives
    /// it.
    pub fn history(&self, read: &HistoryRead) -> ServerMessage {
        history_reply(read, &mut StoredHistory { store: self, model: &read.model })
    }

    /// The answer to a query the session host accepted, as the server's store gives it: an
    /// index is read by sorting the models' stored keys at its path.
    pub fn query(
        &self,
        read: &QueryRead,
        config: &HostConfig,
        limits: &QueryLimits,
    ) -> ServerMessage {
        query_reply(read, config, limits, &mut StoredQuery { store: self })
    }

    /// A model's current state: its snapshot and the operations after it, applied.
    pub fn current(&self, model: &ModelId) -> Result<QueryModelData, String> {
        let (_, snapshot) = self.models.get(model).ok_or_else(|| format!("no model {model}"))?;
        let mut document = snapshot.data.clone();
        let (mut version, mut modified) = (snapshot.version, snapshot.modified_at);
        for operation in self.operations(model, snapshot.version, u64::MAX, usize::MAX) {
            document.apply(&operation.operation).map_err(|e| e.to_string())?;
            version = operation.version;
            modified = operation.timestamp;
        }
        Ok(QueryModelData::of(&document, version, snapshot.created_at, modified))
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

/// One model's history in a [`MemoryServerStore`].
struct StoredHistory<'a> {
    store: &'a MemoryServerStore,
    model: &'a ModelId,
}

impl HistorySource for StoredHistory<'_> {
    fn oldest_checkpoint(&mut self) -> Result<Option<u64>, ReadFailure> {
        Ok(self.store.checkpoints.get(self.model).and_then(|c| c.keys().next().copied()))
    }

    fn checkpoint_at_or_before(
        &mut self,
        version: u64,
    ) -> Result<Option<ModelSnapshot>, ReadFailure> {
        let checkpoints = self.store.checkpoints.get(self.model);
        Ok(checkpoints.and_then(|c| c.range(..=version).next_back()).map(|(_, s)| s.clone()))
    }

    fn operations(
        &mut self,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<HistoryOperation>, ReadFailure> {
        Ok(self.store.operations_with_users(self.model, after, through, limit))
    }

    fn commit_time(&mut self, version: u64) -> Result<Option<Timestamp>, ReadFailure> {
        let operations = self.store.operations.get(self.model);
        Ok(operations.and_then(|o| o.get(&version)).map(|o| o.timestamp))
    }
}

/// The models of a [`MemoryServerStore`], for a query.
struct StoredQuery<'a> {
    store: &'a MemoryServerStore,
}

struct StoredEntry<'a> {
    store: &'a MemoryServerStore,
    model: &'a ModelId,
    record: &'a ModelRecord,
}

impl QueryEntry for StoredEntry<'_> {
    fn model(&self) -> &ModelId {
        self.model
    }
    fn record(&self) -> &ModelRecord {
        self.record
    }
    fn load(&mut self) -> Result<QueryModelData, ReadFailure> {
        self.store.current(self.model).map_err(ReadFailure::internal)
    }
}

impl QuerySource for StoredQuery<'_> {
    fn collection(
        &mut self,
        collection: &CollectionId,
    ) -> Result<Option<CollectionConfig>, ReadFailure> {
        Ok(self.store.collection(collection))
    }

    fn model(&mut self, model: &ModelId) -> Result<QueryModelData, ReadFailure> {
        self.store.current(model).map_err(ReadFailure::internal)
    }

    fn scan(
        &mut self,
        collection: &CollectionId,
        index: Option<&IndexScan>,
        visit: &mut dyn FnMut(&mut dyn QueryEntry) -> Result<bool, ReadFailure>,
    ) -> Result<(), ReadFailure> {
        let members = self.store.models.iter().filter(|(_, (r, _))| &r.collection == collection);
        let mut order: Vec<(Vec<u8>, &ModelId, &ModelRecord)> = match index {
            None => members.map(|(id, (record, _))| (Vec::new(), id, record)).collect(),
            Some(scan) => members
                .filter_map(|(id, (record, _))| {
                    let keys = self.store.index_keys.get(id)?;
                    let (_, key) = keys.iter().find(|(path, _)| *path == scan.path)?;
                    scan.bounds.contains(key).then(|| (key.clone(), id, record))
                })
                .collect(),
        };
        order.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        if index.is_some_and(|scan| scan.direction == Direction::Descending) {
            order.reverse();
        }
        for (_, model, record) in order {
            if !visit(&mut StoredEntry { store: self.store, model, record })? {
                break;
            }
        }
        Ok(())
    }
}
