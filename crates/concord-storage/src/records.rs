//! What a store holds: model records and their state, the subscription set, the replica id
//! and the identity cache. Plain data; [`crate::encoding`] owns their byte format.

use std::collections::BTreeMap;
use std::fmt;

use concord_ot::{Operation, Value};
use concord_protocol::{
    CollectionId, CommittedOperation, CreationNonce, Identity, ModelId, Permissions, SessionId,
    Timestamp, User, UserId,
};
use serde::{Deserialize, Serialize};

/// Names one store: one per (server, user). A backend maps it to a file or database name;
/// the store records it and refuses to open under another key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StoreKey {
    /// The server (its URL, or the domain it serves), as the application names it.
    pub server: String,
    /// The user whose offline data this is.
    pub user: String,
}

impl StoreKey {
    pub fn new(server: impl Into<String>, user: impl Into<String>) -> StoreKey {
        StoreKey { server: server.into(), user: user.into() }
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} @ {}", self.user, self.server)
    }
}

/// The part of a model's metadata that the sync engine owns and writes whole with
/// [`Mutation::PutModel`](crate::Mutation::PutModel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    pub id: ModelId,
    pub collection: CollectionId,
    /// Created in this store and not yet confirmed by the server; its [`CreationRecord`]
    /// holds what to send.
    pub created_locally: bool,
    /// Deleted in this store and not yet confirmed by the server (a tombstone).
    pub deleted_locally: bool,
    /// What this user may do with the model, as last told by the server (`None`: not known,
    /// for example for a model created offline).
    pub permissions: Option<Permissions>,
    /// The counter of the next element id this replica mints in the model. The store never
    /// lets it decrease, so an id is never minted twice.
    pub next_element_counter: u64,
}

impl ModelRecord {
    /// A record with no flags set, no known permissions and the counter at 0.
    pub fn new(id: ModelId, collection: CollectionId) -> ModelRecord {
        ModelRecord {
            id,
            collection,
            created_locally: false,
            deleted_locally: false,
            permissions: None,
            next_element_counter: 0,
        }
    }
}

/// The server's state of a model at one version: the base that server operations and then
/// pending operations apply to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The number of operations the server had committed to the model (Vs).
    pub version: u64,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
    /// The root object, with its element ids.
    pub root: Value,
}

/// Local changes the server has not acknowledged yet: one change, or a run of the
/// consecutive seqs `seq..=through` composed into one operation (format 3; a run is one
/// record however many seqs it covers).
///
/// Pending operations are always expressed against the model's confirmed version (the last
/// server operation, or the snapshot): when a server operation arrives, the engine stores it
/// and replaces the pending list with its transformed form in the same batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingOperation {
    /// The engine's sequence number of its first change; strictly increasing within a model
    /// and never reused while the model is in the store.
    pub seq: u64,
    /// The seq of its last change (`seq` for a single change).
    pub through: u64,
    pub operation: Operation,
}

impl PendingOperation {
    /// One change at `seq`.
    pub fn new(seq: u64, operation: Operation) -> PendingOperation {
        PendingOperation { seq, through: seq, operation }
    }

    /// The changes `seq..=through`, composed into `operation`.
    pub fn run(seq: u64, through: u64, operation: Operation) -> PendingOperation {
        PendingOperation { seq, through, operation }
    }

    /// How many seqs it covers (0 if `through < seq`, which no store accepts).
    pub fn seqs(&self) -> u64 {
        (self.through + 1).saturating_sub(self.seq)
    }
}

/// What creating a model offline needs to send once connected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreationRecord {
    pub collection: CollectionId,
    /// The initial root object.
    pub initial: Value,
    /// Makes a retried creation recognisable to the server.
    pub nonce: CreationNonce,
}

/// One model as [`OfflineStore::models`](crate::OfflineStore::models) lists it: the
/// engine's record plus what the store knows about the model's data, without loading it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub record: ModelRecord,
    /// The version of the stored snapshot (Vs); `None` without one.
    pub snapshot_version: Option<u64>,
    /// The version the stored confirmed state reaches (Vc): the last stored server
    /// operation's, else the snapshot's; `None` without a snapshot.
    pub confirmed_version: Option<u64>,
    /// How many pending seqs are stored (a run counts every seq it covers).
    pub pending_count: u64,
    /// The highest pending sequence number ever stored for this model (kept when the
    /// operations are removed); the next one must be greater.
    pub last_pending_seq: Option<u64>,
    /// The submission on the wire: the pending operations with `seq <=` this were sent
    /// together, identified to the server by this seq. `None` when nothing is in flight.
    /// Durable before the submission is sent, so that after a restart resync can ask
    /// whether it was committed.
    pub in_flight_through: Option<u64>,
    /// A [`CreationRecord`] is stored.
    pub has_creation: bool,
}

impl ModelSummary {
    /// The model has local changes the server has not confirmed: pending operations, an
    /// unconfirmed creation or an unconfirmed deletion.
    pub fn needs_sync(&self) -> bool {
        self.pending_count > 0 || self.record.created_locally || self.record.deleted_locally
    }
}

/// What a store holds that the server has not confirmed, as
/// [`OfflineStore::unsynced`](crate::OfflineStore::unsynced) lists it: ids only, so that
/// listing it at every connection costs memory in proportion to the models with changes,
/// not to every model's summary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unsynced {
    /// Models with pending operations or a creation the server has not confirmed (and not
    /// deleted here), in model id order.
    pub changed: Vec<ModelId>,
    /// Models deleted here whose deletion the server has not confirmed, in model id order.
    pub deleted: Vec<Tombstone>,
}

/// A model deleted here whose deletion the server has not confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub model: ModelId,
    pub collection: CollectionId,
    /// The nonce of the model's creation here, if the server never confirmed it (its
    /// [`CreationRecord`] is kept beside the tombstone): the deletion names it, so that the
    /// server deletes only the model that creation made.
    pub creation: Option<CreationNonce>,
}

/// Everything a store holds about one model: what rehydration needs.
///
/// Rehydration is: `snapshot` (or, for a model created offline and not yet confirmed,
/// `creation.initial`), then `server_operations` in order, then `pending` in order.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelState {
    pub summary: ModelSummary,
    pub snapshot: Option<Snapshot>,
    /// The server operations after the snapshot, contiguous and in version order.
    pub server_operations: Vec<CommittedOperation>,
    /// In sequence order.
    pub pending: Vec<PendingOperation>,
    pub creation: Option<CreationRecord>,
}

/// The users behind session ids, so that authors of stored operations resolve offline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityCache {
    pub sessions: BTreeMap<SessionId, UserId>,
    pub users: BTreeMap<UserId, User>,
    /// Display names and emails, as identity lookups at the server answered them.
    pub identities: BTreeMap<UserId, Identity>,
}
