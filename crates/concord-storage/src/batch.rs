//! Batches: the only way to change a store. A batch is a list of mutations applied in order,
//! all or nothing.

use std::collections::BTreeSet;

use concord_ot::ReplicaId;
use concord_protocol::{CommittedOperation, Identity, ModelId, SessionId, User, UserId};

use crate::records::{CreationRecord, ModelRecord, PendingOperation, Snapshot};

/// One change of state, applied atomically and durably by
/// [`OfflineStore::commit`](crate::OfflineStore::commit).
///
/// Mutations apply in order, each seeing the effect of the ones before it. If any is
/// rejected ([`StorageError::InvalidBatch`](crate::StorageError::InvalidBatch)), none of the
/// batch is applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub mutations: Vec<Mutation>,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Appends a mutation; returns `self` for chaining.
    pub fn with(mut self, mutation: Mutation) -> Batch {
        self.mutations.push(mutation);
        self
    }

    pub fn push(&mut self, mutation: Mutation) {
        self.mutations.push(mutation);
    }

    pub fn is_empty(&self) -> bool {
        self.mutations.is_empty()
    }

    pub fn len(&self) -> usize {
        self.mutations.len()
    }
}

impl From<Vec<Mutation>> for Batch {
    fn from(mutations: Vec<Mutation>) -> Batch {
        Batch { mutations }
    }
}

impl FromIterator<Mutation> for Batch {
    fn from_iter<I: IntoIterator<Item = Mutation>>(iter: I) -> Batch {
        Batch { mutations: iter.into_iter().collect() }
    }
}

/// One mutation of a [`Batch`].
///
/// Every mutation that names a model, except [`PutModel`](Mutation::PutModel) and
/// [`DeleteModel`](Mutation::DeleteModel), requires the model's record to exist (stored, or
/// put earlier in the same batch); otherwise the batch is rejected.
#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// Inserts or replaces a model's record. The stored `next_element_counter` never
    /// decreases: the larger of the stored and the given value is kept. The model's data
    /// (snapshot, operations, creation record) is untouched.
    PutModel(ModelRecord),
    /// Removes a model's record and all its data. Nothing happens if there is none. The
    /// subscription set is not changed.
    DeleteModel(ModelId),
    /// Stores the model's snapshot (replacing any) and drops the stored server operations
    /// it covers (version <= `snapshot.version`): this is how the log is compacted. Rejected
    /// if it would leave a gap: stored operations remain above the new snapshot but the old
    /// snapshot was newer than the new one.
    PutSnapshot { model: ModelId, snapshot: Snapshot },
    /// Appends server operations after the confirmed version. Their versions must be
    /// consecutive and the first one the confirmed version + 1; the model needs a snapshot.
    AppendServerOperations { model: ModelId, operations: Vec<CommittedOperation> },
    /// Replaces all pending operations (for example with their form transformed against a
    /// new server operation). Each is one change or a run (`seq..=through`); runs must not
    /// overlap and must be in increasing seq order.
    ReplacePending { model: ModelId, operations: Vec<PendingOperation> },
    /// Rewrites some stored pending operations in place (for example the few runs a new
    /// server operation transformed, or consecutive ones composed into one run): each given
    /// run `seq..=through` replaces the stored records of exactly those seqs, which must all
    /// be stored, the first starting at `seq` and the last ending at `through`. The rest stay
    /// as stored, so the batch grows with what changed, not with every pending operation.
    /// Runs must not overlap and must be in increasing seq order.
    UpdatePending { model: ModelId, operations: Vec<PendingOperation> },
    /// Appends pending operations. Runs must not overlap, must be in increasing seq order and
    /// start after any seq this model ever had
    /// ([`ModelSummary::last_pending_seq`](crate::ModelSummary)).
    AppendPending { model: ModelId, operations: Vec<PendingOperation> },
    /// Removes the pending operations with `seq <= through_seq` (the server acknowledged
    /// them). A stored run reaching past `through_seq` is not split: the batch is rejected.
    RemovePendingThrough { model: ModelId, through_seq: u64 },
    /// Records the boundary of the submission on the wire
    /// ([`ModelSummary::in_flight_through`](crate::ModelSummary)), or that none is.
    SetInFlight { model: ModelId, through_seq: Option<u64> },
    /// Stores (or replaces) the model's creation record.
    PutCreation { model: ModelId, creation: CreationRecord },
    /// Removes the model's creation record; nothing happens if there is none.
    DeleteCreation(ModelId),
    /// Raises the model's `next_element_counter` to `next` (no effect if it is already at
    /// least `next`).
    AdvanceElementCounter { model: ModelId, next: u64 },
    /// Replaces the subscription set. Subscribed ids need no model record (a model can be
    /// subscribed before its first download).
    SetSubscriptions(BTreeSet<ModelId>),
    /// Adds ids to the subscription set.
    Subscribe(Vec<ModelId>),
    /// Removes ids from the subscription set.
    Unsubscribe(Vec<ModelId>),
    /// Records which user is behind each session (replacing earlier entries of a session).
    PutSessions(Vec<(SessionId, UserId)>),
    /// Forgets sessions.
    RemoveSessions(Vec<SessionId>),
    /// Records users (replacing earlier entries with the same id).
    PutUsers(Vec<User>),
    /// Records identities the server showed (replacing earlier entries of the same user).
    PutIdentities(Vec<Identity>),
    /// Records the store's replica id. It is set once: setting the same value again is
    /// accepted, a different value is rejected (element ids already minted would collide).
    SetReplicaId(ReplicaId),
}

impl Mutation {
    /// The model this mutation is about, if any.
    pub fn model(&self) -> Option<&ModelId> {
        match self {
            Mutation::PutModel(record) => Some(&record.id),
            Mutation::DeleteModel(model)
            | Mutation::PutSnapshot { model, .. }
            | Mutation::AppendServerOperations { model, .. }
            | Mutation::ReplacePending { model, .. }
            | Mutation::UpdatePending { model, .. }
            | Mutation::AppendPending { model, .. }
            | Mutation::RemovePendingThrough { model, .. }
            | Mutation::SetInFlight { model, .. }
            | Mutation::PutCreation { model, .. }
            | Mutation::DeleteCreation(model)
            | Mutation::AdvanceElementCounter { model, .. } => Some(model),
            Mutation::SetSubscriptions(_)
            | Mutation::Subscribe(_)
            | Mutation::Unsubscribe(_)
            | Mutation::PutSessions(_)
            | Mutation::RemoveSessions(_)
            | Mutation::PutUsers(_)
            | Mutation::PutIdentities(_)
            | Mutation::SetReplicaId(_) => None,
        }
    }
}
