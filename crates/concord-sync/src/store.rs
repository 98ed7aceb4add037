//! Between the replica's state and the offline store's records: [`StoreChange`]s become
//! [`Mutation`]s, and a stored [`ModelState`] becomes a [`Restored`] model ([`restore`]),
//! the one way a stored model comes back into memory.

use concord_ot::Document;
use concord_protocol::{CreationNonce, ModelId, ModelSnapshot};
use concord_storage::{
    CreationRecord, ModelRecord, ModelState, ModelSummary, Mutation, PendingOperation, Snapshot,
};

use crate::engine::StorageBatch;
use crate::replica::{ModelReplica, Persisted, ReplicaError, Restoring, StoreChange};

/// The mutations that carry out an engine batch, atomically.
pub fn batch_mutations(batch: StorageBatch) -> Vec<Mutation> {
    mutations(&batch.model, batch.changes)
}

/// The stored models with something to sync (unsent or unacknowledged changes, a creation
/// the server has not confirmed) that are not `loaded`: the models
/// [`handle_connected`](crate::ClientEngine::handle_connected) syncs in the background.
pub fn with_changes(summaries: &[ModelSummary], loaded: &[&ModelId]) -> Vec<ModelId> {
    summaries
        .iter()
        .filter(|m| {
            let dirty = m.pending_count > 0 || m.record.created_locally;
            dirty && !m.record.deleted_locally && !loaded.contains(&&m.record.id)
        })
        .map(|m| m.record.id.clone())
        .collect()
}

/// Why a stored model cannot be rebuilt.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    #[error("model {0} has no stored snapshot")]
    NoSnapshot(ModelId),
    #[error("the stored snapshot of model {model} is not a valid document: {error}")]
    InvalidSnapshot { model: ModelId, error: concord_ot::ValueError },
    #[error("the stored history of model {model} does not replay: {error}")]
    Replay { model: ModelId, error: ReplicaError },
    #[error("the stored pending operations of model {0} changed while they were read")]
    Changed(ModelId),
}

/// A model rebuilt from the store, ready for [`ClientEngine::add_model`] or
/// [`ClientEngine::handle_loaded`](crate::ClientEngine::handle_loaded).
///
/// [`ClientEngine::add_model`]: crate::ClientEngine::add_model
#[derive(Debug, Clone)]
pub struct Restored {
    pub replica: ModelReplica,
    /// The nonce of a creation made here that the server has not confirmed yet.
    pub creation: Option<CreationNonce>,
    /// The stored element-id counter: no id this replica minted in the model is above it.
    pub next_element_counter: u64,
}

impl From<ModelReplica> for Restored {
    /// A replica that is not from the store (downloaded or made in a test): no creation
    /// owed, and element ids counted from the document's.
    fn from(replica: ModelReplica) -> Restored {
        Restored { replica, creation: None, next_element_counter: 0 }
    }
}

/// Rebuilds a stored model: snapshot, then server operations, then pending operations
/// ([`ModelReplica::restore`]), with its creation nonce and element-id counter.
pub fn restore(state: ModelState) -> Result<Restored, RestoreError> {
    let model = state.summary.record.id.clone();
    let next_element_counter = state.summary.record.next_element_counter;
    let creation = pending_creation(&state);
    let replica = ModelReplica::restore(persisted(state)?)
        .map_err(|error| RestoreError::Replay { model, error })?;
    Ok(Restored { replica, creation, next_element_counter })
}

/// How many pending records a restore reads from the store at a time
/// ([`OfflineStore::pending_page`](concord_storage::OfflineStore::pending_page)).
pub const RESTORE_PAGE: usize = 256;

/// A stored model being rebuilt a page of pending records at a time, so that a model with
/// many offline changes is never held in memory one change at a time: start it from
/// [`OfflineStore::load_model_head`](concord_storage::OfflineStore::load_model_head), push
/// each [`OfflineStore::pending_page`](concord_storage::OfflineStore::pending_page) after
/// [`RestoringModel::next_after`], then [`RestoringModel::finish`], which checks that the
/// pages added up to what the head's summary counted.
#[derive(Debug)]
pub struct RestoringModel {
    model: ModelId,
    summary: ModelSummary,
    creation: Option<CreationNonce>,
    restoring: Restoring,
    seqs: u64,
    done: bool,
}

impl RestoringModel {
    /// Starts from a model's head (its `pending` list, usually empty, is pushed first).
    pub fn new(head: ModelState) -> Result<RestoringModel, RestoreError> {
        let model = head.summary.record.id.clone();
        let summary = head.summary.clone();
        let creation = pending_creation(&head);
        let seqs = head.pending.iter().map(PendingOperation::seqs).sum();
        let restoring = Restoring::new(persisted(head)?)
            .map_err(|error| RestoreError::Replay { model: model.clone(), error })?;
        let done = seqs >= summary.pending_count;
        Ok(RestoringModel { model, summary, creation, restoring, seqs, done })
    }

    /// `None` once every pending seq the summary counted was pushed; else the seq the next
    /// page starts after (`Some(None)`: from the first).
    pub fn next_after(&self) -> Option<Option<u64>> {
        (!self.done).then_some(self.restoring.last_seq())
    }

    /// The next page of pending records. An empty page ends the reading.
    pub fn push(&mut self, page: Vec<PendingOperation>) -> Result<(), RestoreError> {
        if page.is_empty() {
            self.done = true;
            return Ok(());
        }
        self.seqs += page.iter().map(PendingOperation::seqs).sum::<u64>();
        self.restoring
            .push(page)
            .map_err(|error| RestoreError::Replay { model: self.model.clone(), error })?;
        if self.seqs >= self.summary.pending_count {
            self.done = true;
        }
        Ok(())
    }

    /// The restored model; [`RestoreError::Changed`] if the pages do not add up to the
    /// head's summary (the store changed between the reads: read it again).
    pub fn finish(self) -> Result<Restored, RestoreError> {
        let last = self.restoring.last_seq();
        if self.seqs != self.summary.pending_count
            || (self.seqs > 0 && last > self.summary.last_pending_seq)
        {
            return Err(RestoreError::Changed(self.model));
        }
        Ok(Restored {
            replica: self.restoring.finish(),
            creation: self.creation,
            next_element_counter: self.summary.record.next_element_counter,
        })
    }
}

/// The store mutations that carry out `changes` for `model`, in order.
pub fn mutations(model: &ModelId, changes: Vec<StoreChange>) -> Vec<Mutation> {
    changes
        .into_iter()
        .flat_map(|change| {
            let model = model.clone();
            let one = match change {
                StoreChange::AppendServerOperation(op) => {
                    Mutation::AppendServerOperations { model, operations: vec![op] }
                }
                StoreChange::AppendPending(op) => {
                    Mutation::AppendPending { model, operations: vec![op] }
                }
                StoreChange::ReplacePending(operations) => {
                    Mutation::ReplacePending { model, operations }
                }
                StoreChange::UpdatePending(operations) => {
                    Mutation::UpdatePending { model, operations }
                }
                StoreChange::RemovePendingThrough(through_seq) => {
                    Mutation::RemovePendingThrough { model, through_seq }
                }
                StoreChange::SetInFlight(through_seq) => {
                    Mutation::SetInFlight { model, through_seq }
                }
                StoreChange::PutSnapshot(snapshot) => {
                    Mutation::PutSnapshot { model, snapshot: to_stored(&snapshot) }
                }
                StoreChange::Created { snapshot, nonce } => {
                    let mut record = ModelRecord::new(model.clone(), snapshot.collection.clone());
                    record.created_locally = true;
                    let creation = CreationRecord {
                        collection: snapshot.collection.clone(),
                        initial: snapshot.data.to_value(),
                        nonce,
                    };
                    return vec![
                        Mutation::PutModel(record),
                        Mutation::PutSnapshot {
                            model: model.clone(),
                            snapshot: to_stored(&snapshot),
                        },
                        Mutation::PutCreation { model, creation },
                    ];
                }
                StoreChange::CreationConfirmed { collection } => {
                    let record = ModelRecord::new(model.clone(), collection);
                    return vec![Mutation::PutModel(record), Mutation::DeleteCreation(model)];
                }
                StoreChange::MarkDeleted { collection } => {
                    let mut record = ModelRecord::new(model, collection);
                    record.deleted_locally = true;
                    Mutation::PutModel(record)
                }
                StoreChange::Undelete { collection, creation } => {
                    // The creation record was kept beside the tombstone; the model owes the
                    // server that creation again.
                    let mut record = ModelRecord::new(model, collection);
                    record.created_locally = creation.is_some();
                    Mutation::PutModel(record)
                }
                StoreChange::Forget => Mutation::DeleteModel(model),
                StoreChange::Downloaded { snapshot } => {
                    let record = ModelRecord::new(model.clone(), snapshot.collection.clone());
                    return vec![
                        Mutation::PutModel(record),
                        Mutation::PutSnapshot { model, snapshot: to_stored(&snapshot) },
                    ];
                }
                StoreChange::Subscribe => Mutation::Subscribe(vec![model]),
                StoreChange::Unsubscribe => Mutation::Unsubscribe(vec![model]),
                StoreChange::AdvanceElementCounter(next) => {
                    Mutation::AdvanceElementCounter { model, next }
                }
            };
            vec![one]
        })
        .collect()
}

/// The nonce of a creation the server has not confirmed yet.
fn pending_creation(state: &ModelState) -> Option<CreationNonce> {
    state.creation.as_ref().map(|c| c.nonce)
}

/// A snapshot as the store keeps it.
pub fn to_stored(snapshot: &ModelSnapshot) -> Snapshot {
    Snapshot {
        version: snapshot.version,
        created_at: snapshot.created_at,
        modified_at: snapshot.modified_at,
        root: snapshot.data.to_value(),
    }
}

/// What a replica is restored from, out of what the store holds for the model.
fn persisted(state: ModelState) -> Result<Persisted, RestoreError> {
    let model = state.summary.record.id.clone();
    let snapshot = state.snapshot.ok_or_else(|| RestoreError::NoSnapshot(model.clone()))?;
    let data = Document::new(snapshot.root)
        .map_err(|error| RestoreError::InvalidSnapshot { model, error })?;
    let next_seq = state.summary.last_pending_seq.map_or(1, |seq| seq + 1);
    Ok(Persisted {
        snapshot: ModelSnapshot {
            collection: state.summary.record.collection,
            version: snapshot.version,
            created_at: snapshot.created_at,
            modified_at: snapshot.modified_at,
            data,
        },
        server_operations: state.server_operations,
        pending: state.pending,
        in_flight_seq: state.summary.in_flight_through,
        next_seq,
    })
}
