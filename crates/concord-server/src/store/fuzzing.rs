//! RedbStore reading for Concord's fuzz targets, which feed it what a damaged disk or a hand
//! that forged a checksum would leave: payloads of every record type sealed with a valid
//! checksum, and whole store files. Not part of the crate's API: it changes with the format.

use std::path::Path;

use concord_protocol::{CollectionId, CommittedOperation, ModelId, ModelSnapshot, UserId};
use concord_sync::host::{CollectionConfig, ModelRecord};
use redb::{ReadableDatabase, ReadableTable, TableHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::record::{seal_bytes, unseal};
use super::{
    COLLECTIONS, FILE_NAME, LAST_DECISIONS, MODELS, OPERATIONS, REPLICA_OWNERS, RedbStore,
    SNAPSHOTS, StoreError, StoredDecision, USERS, backend, catching_damage,
};
use crate::types::ModelKey;

/// The record types the store's tables hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Model,
    Snapshot,
    Operation,
    LastDecision,
    Collection,
    User,
    ReplicaOwner,
}

impl RecordKind {
    pub const ALL: [RecordKind; 7] = [
        RecordKind::Model,
        RecordKind::Snapshot,
        RecordKind::Operation,
        RecordKind::LastDecision,
        RecordKind::Collection,
        RecordKind::User,
        RecordKind::ReplicaOwner,
    ];
}

/// Reads `payload`, sealed with a valid checksum, as the store reads a record of `kind`,
/// and returns what it decoded encoded again, so that a caller can check that the record
/// reads back the same (no value that reads one way and writes another). A payload that
/// does not decode is a description of why.
pub fn read_sealed(kind: RecordKind, payload: &[u8]) -> Result<Vec<u8>, String> {
    match kind {
        RecordKind::Model => reread::<ModelRecord>(MODELS.name(), payload),
        RecordKind::Snapshot => reread::<ModelSnapshot>(SNAPSHOTS.name(), payload),
        RecordKind::Operation => reread::<CommittedOperation>(OPERATIONS.name(), payload),
        RecordKind::LastDecision => reread::<(u64, StoredDecision)>(LAST_DECISIONS.name(), payload),
        RecordKind::Collection => reread::<CollectionConfig>(COLLECTIONS.name(), payload),
        RecordKind::User => reread::<concord_protocol::User>(USERS.name(), payload),
        RecordKind::ReplicaOwner => reread::<UserId>(REPLICA_OWNERS.name(), payload),
    }
}

fn reread<T: Serialize + DeserializeOwned>(table: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
    let key = ("domain", "model");
    let value: T = unseal(table, &key, &seal_bytes(table, &key, payload))
        .map_err(|damage| damage.to_string())?;
    postcard::to_stdvec(&value).map_err(|e| format!("a decoded record does not encode: {e}"))
}

/// Opens `bytes` as the store file in `dir` (which must not hold one) and reads everything
/// in it as the server would, its reads guarded as the server guards them: every model
/// loaded with its collection, operations and last decisions, every user and replica owner.
/// Returns how many models loaded; any damage is a typed error.
pub fn read_store_file(dir: &Path, bytes: &[u8]) -> Result<usize, StoreError> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(FILE_NAME), bytes)?;
    catching_damage(|| read_all(dir))
}

fn read_all(dir: &Path) -> Result<usize, StoreError> {
    let store = RedbStore::open(dir)?;
    let txn = store.db.begin_read().map_err(backend)?;
    let mut keys = Vec::new();
    for entry in txn.open_table(MODELS).map_err(backend)?.iter().map_err(backend)? {
        let (key, _) = entry.map_err(backend)?;
        let (domain, model) = key.value();
        let model = ModelId::new(model).map_err(|e| StoreError::CorruptRecord {
            domain: domain.to_owned(),
            model: None,
            record: format!("a model id: {e}"),
        })?;
        keys.push(ModelKey { domain: domain.into(), model });
    }
    for entry in txn.open_table(USERS).map_err(backend)?.iter().map_err(backend)? {
        let (key, _) = entry.map_err(backend)?;
        let (domain, user) = key.value();
        store.user(domain, &UserId(user.to_owned()))?;
    }
    for entry in txn.open_table(REPLICA_OWNERS).map_err(backend)?.iter().map_err(backend)? {
        let (key, _) = entry.map_err(backend)?;
        let (domain, replica) = key.value();
        store.replica_owner(domain, concord_ot::ReplicaId(replica))?;
    }
    for entry in txn.open_table(COLLECTIONS).map_err(backend)?.iter().map_err(backend)? {
        let (key, _) = entry.map_err(backend)?;
        let (domain, collection) = key.value();
        if let Ok(collection) = CollectionId::new(collection) {
            store.collection(domain, &collection)?;
        }
    }
    for key in &keys {
        store.load(key)?;
        store.operations(key, 0, u64::MAX, usize::MAX)?;
    }
    Ok(keys.len())
}
