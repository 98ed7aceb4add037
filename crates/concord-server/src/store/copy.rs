//! Copying the embedded store into PostgreSQL (`concord store copy`): every record of the
//! redb store, read in one read transaction and checked as it is read, becomes a row of an
//! empty PostgreSQL database, in transactions of [`BATCH`] records.
//!
//! Query indexes are copied as they are (the declarations the store was opened with, and
//! their entries), so a server started on the database with the same `indexes` uses them at
//! once; one started with other `indexes` builds and drops the difference, as on any store.

use concord_protocol::{
    CollectionId, CommittedOperation, Identity, ModelId, ModelSnapshot, User, UserId,
};
use concord_sync::host::{CollectionConfig, ModelRecord};
use redb::{ReadableTable, TableDefinition, TableHandle};
use serde::de::DeserializeOwned;

use super::query::{COLLECTION_MODELS, INDEX_ENTRIES, INDEXES};
use super::{
    CHECKPOINTS, COLLECTIONS, DELETED, IDENTITIES, LAST_DECISIONS, MODELS, OPERATION_USERS,
    OPERATIONS, REPLICA_OWNERS, RedbStore, SNAPSHOTS, StoreError, StoredDecision, StoredIdentity,
    USERS, backend, corrupt, unseal,
};

/// Records per batch, and so per PostgreSQL transaction.
pub(crate) const BATCH: usize = 1_000;

/// One record of the embedded store, as both backends know it.
#[derive(Debug)]
pub(crate) enum Row {
    Model {
        domain: String,
        model: ModelId,
        record: ModelRecord,
    },
    Member {
        domain: String,
        collection: String,
        model: String,
    },
    Snapshot {
        domain: String,
        model: ModelId,
        snapshot: ModelSnapshot,
    },
    Checkpoint {
        domain: String,
        model: ModelId,
        snapshot: ModelSnapshot,
    },
    Operation {
        domain: String,
        model: ModelId,
        operation: CommittedOperation,
    },
    /// The user of an operation copied before it.
    OperationUser {
        domain: String,
        model: ModelId,
        version: u64,
        user: UserId,
    },
    LastDecision {
        domain: String,
        model: ModelId,
        replica: u64,
        seq: u64,
        decision: StoredDecision,
    },
    Deleted {
        domain: String,
        model: String,
        at: i64,
    },
    Collection {
        domain: String,
        collection: CollectionId,
        config: CollectionConfig,
    },
    User {
        domain: String,
        user: User,
    },
    ReplicaOwner {
        domain: String,
        replica: u64,
        owner: UserId,
    },
    Identity {
        domain: String,
        identity: Identity,
        seen: i64,
    },
    /// A declared index (built).
    Index {
        collection: String,
        path: String,
    },
    IndexEntry {
        domain: String,
        collection: String,
        path: String,
        entry: Vec<u8>,
        model: String,
    },
}

/// Reads every record of `store`, table after table (an operation before its user), and hands
/// them to `send` [`BATCH`] at a time; stops, with `Ok`, as soon as `send` returns `false`.
/// A damaged record stops the copy with [`StoreError::CorruptRecord`].
pub(crate) fn export(
    store: &RedbStore,
    mut send: impl FnMut(Vec<Row>) -> bool,
) -> Result<(), StoreError> {
    let txn = store.begin_read()?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut push = |row: Row, batch: &mut Vec<Row>| {
        batch.push(row);
        batch.len() < BATCH || send(std::mem::replace(batch, Vec::with_capacity(BATCH)))
    };
    macro_rules! each {
        ($table:expr, |$key:ident, $value:ident| $row:expr) => {
            for entry in txn.open_table($table).map_err(backend)?.iter().map_err(backend)? {
                let (stored_key, stored) = entry.map_err(backend)?;
                let ($key, $value) = (stored_key.value(), stored.value());
                let row: Result<Row, StoreError> = $row;
                if !push(row?, &mut batch) {
                    return Ok(());
                }
            }
        };
    }
    each!(MODELS, |k, v| {
        let model = model_id(k.0, k.1)?;
        Ok(Row::Model { domain: k.0.into(), record: read(MODELS, &k, v, k.0, &model)?, model })
    });
    each!(COLLECTION_MODELS, |k, _v| {
        Ok(Row::Member { domain: k.0.into(), collection: k.1.into(), model: k.2.into() })
    });
    each!(SNAPSHOTS, |k, v| {
        let model = model_id(k.0, k.1)?;
        Ok(Row::Snapshot {
            domain: k.0.into(),
            snapshot: read(SNAPSHOTS, &k, v, k.0, &model)?,
            model,
        })
    });
    each!(CHECKPOINTS, |k, v| {
        let model = model_id(k.0, k.1)?;
        let snapshot = read(CHECKPOINTS, &k, v, k.0, &model)?;
        Ok(Row::Checkpoint { domain: k.0.into(), model, snapshot })
    });
    each!(OPERATIONS, |k, v| {
        let model = model_id(k.0, k.1)?;
        let operation = read(OPERATIONS, &k, v, k.0, &model)?;
        Ok(Row::Operation { domain: k.0.into(), model, operation })
    });
    each!(OPERATION_USERS, |k, v| {
        let model = model_id(k.0, k.1)?;
        let user = read(OPERATION_USERS, &k, v, k.0, &model)?;
        Ok(Row::OperationUser { domain: k.0.into(), model, version: k.2, user })
    });
    each!(LAST_DECISIONS, |k, v| {
        let model = model_id(k.0, k.1)?;
        let (seq, decision) = read(LAST_DECISIONS, &k, v, k.0, &model)?;
        Ok(Row::LastDecision { domain: k.0.into(), model, replica: k.2, seq, decision })
    });
    each!(DELETED, |k, v| Ok(Row::Deleted { domain: k.0.into(), model: k.1.into(), at: v }));
    each!(COLLECTIONS, |k, v| {
        let collection = CollectionId::new(k.1).map_err(|e| StoreError::CorruptRecord {
            domain: k.0.to_owned(),
            model: None,
            record: format!("a collection's key {:?}: {e}", k.1),
        })?;
        let config = unseal(COLLECTIONS.name(), &k, v)
            .map_err(|damage| corrupt(k.0, None, super::collection_record(&collection), damage))?;
        Ok(Row::Collection { domain: k.0.into(), collection, config })
    });
    each!(USERS, |k, v| {
        let user = unseal(USERS.name(), &k, v)
            .map_err(|damage| corrupt(k.0, None, format!("user {}", k.1), damage))?;
        Ok(Row::User { domain: k.0.into(), user })
    });
    each!(REPLICA_OWNERS, |k, v| {
        let owner = unseal(REPLICA_OWNERS.name(), &k, v)
            .map_err(|damage| corrupt(k.0, None, format!("replica {}'s owner", k.1), damage))?;
        Ok(Row::ReplicaOwner { domain: k.0.into(), replica: k.1, owner })
    });
    each!(IDENTITIES, |k, v| {
        let stored: StoredIdentity = unseal(IDENTITIES.name(), &k, v)
            .map_err(|damage| corrupt(k.0, None, format!("identity {}", k.1), damage))?;
        Ok(Row::Identity { domain: k.0.into(), identity: stored.identity, seen: stored.seen })
    });
    each!(INDEXES, |k, _v| Ok(Row::Index { collection: k.0.into(), path: k.1.into() }));
    each!(INDEX_ENTRIES, |k, v| {
        let (domain, collection, path) = (k.0.into(), k.1.into(), k.2.into());
        Ok(Row::IndexEntry { domain, collection, path, entry: k.3.to_vec(), model: v.into() })
    });
    if !batch.is_empty() {
        send(batch);
    }
    Ok(())
}

fn model_id(domain: &str, model: &str) -> Result<ModelId, StoreError> {
    ModelId::new(model).map_err(|e| StoreError::CorruptRecord {
        domain: domain.to_owned(),
        model: None,
        record: format!("a model's key {model:?}: {e}"),
    })
}

/// The record of `model` stored as `bytes` under `key` in `table`.
fn read<K: redb::Key + 'static, T: DeserializeOwned>(
    table: TableDefinition<K, &[u8]>,
    key: &impl serde::Serialize,
    bytes: &[u8],
    domain: &str,
    model: &ModelId,
) -> Result<T, StoreError> {
    unseal(table.name(), key, bytes).map_err(|damage| {
        corrupt(domain, Some(model), format!("a record of {}", table.name()), damage)
    })
}
