//! RedbStore reading for Concord's fuzz targets, which feed it what a damaged disk or a hand
//! that forged a checksum would leave: payloads of every record type sealed with a valid
//! checksum, and whole store files — damaged copies of a file of the current format holding
//! every record type ([`sample_store_file`]). Not part of the crate's API: it changes with
//! the format.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use concord_ot::ValueData;
use concord_ot::{DiscreteOperation, Document, ElementId, OperationKind, ReplicaId, Value};
use concord_protocol::{
    CollectionId, CommittedOperation, ErrorCode, HistoryStart, Identity, ModelId, ModelSnapshot,
    PermissionGrants, RequestId, SessionId, Timestamp, User, UserId,
};
use concord_query::{IndexKey, Path as QueryPath, Query};
use concord_sync::host::{
    CollectionConfig, HistoryQuery, HistoryRead, HostConfig, ModelRecord, QueryLimits, QueryRead,
    Write,
};
use concord_sync::{CommitRecord, RefusalRecord};
use redb::{ReadableDatabase, ReadableTable, TableHandle};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::query::{IndexedKeys, MODEL_INDEX_KEYS};
use super::record::{seal_bytes, unseal};
use super::{
    CHECKPOINTS, COLLECTIONS, DomainWrites, FILE_NAME, IDENTITIES, LAST_DECISIONS, MODELS,
    OPERATION_USERS, OPERATIONS, REPLICA_OWNERS, RedbStore, SNAPSHOTS, StoreError, StoredDecision,
    StoredIdentity, USERS, backend, catching_damage, encode_logged, log_position, wal,
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
    Checkpoint,
    OperationUser,
    Identity,
    ModelIndexKeys,
}

impl RecordKind {
    pub const ALL: [RecordKind; 11] = [
        RecordKind::Model,
        RecordKind::Snapshot,
        RecordKind::Operation,
        RecordKind::LastDecision,
        RecordKind::Collection,
        RecordKind::User,
        RecordKind::ReplicaOwner,
        RecordKind::Checkpoint,
        RecordKind::OperationUser,
        RecordKind::Identity,
        RecordKind::ModelIndexKeys,
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
        RecordKind::Checkpoint => reread::<ModelSnapshot>(CHECKPOINTS.name(), payload),
        RecordKind::OperationUser => reread::<UserId>(OPERATION_USERS.name(), payload),
        RecordKind::Identity => reread::<StoredIdentity>(IDENTITIES.name(), payload),
        RecordKind::ModelIndexKeys => reread::<IndexedKeys>(MODEL_INDEX_KEYS.name(), payload),
    }
}

fn reread<T: Serialize + DeserializeOwned>(table: &str, payload: &[u8]) -> Result<Vec<u8>, String> {
    let key = ("domain", "model");
    let value: T = unseal(table, &key, &seal_bytes(table, &key, payload))
        .map_err(|damage| damage.to_string())?;
    postcard::to_stdvec(&value).map_err(|e| format!("a decoded record does not encode: {e}"))
}

/// The domain of [`sample_store_file`].
const SAMPLE_DOMAIN: &str = "acme";

/// The indexes [`sample_store_file`] declares, and [`read_store_file`] opens with (so that
/// opening a damaged file also checks and rebuilds its index tables).
pub(crate) fn sample_indexes() -> BTreeMap<CollectionId, Vec<QueryPath>> {
    let paths = ["n", "s"].map(|p| QueryPath::parse(p).expect("a valid path"));
    [(sample_collection(), paths.to_vec())].into()
}

fn sample_collection() -> CollectionId {
    CollectionId::new("notes").expect("a valid collection id")
}

/// A store file of the current format in `dir` (which must not hold one), with a record in
/// every table: models (one deleted), snapshots and checkpoints, operations with their
/// users, last decisions (a commit and a refusal), a collection, users, identities, a
/// replica owner and index entries. Returns the file's bytes.
pub fn sample_store_file(dir: &Path) -> Result<Vec<u8>, StoreError> {
    let store = RedbStore::open_indexed(dir, &sample_indexes())?;
    store.commit_logged(&sample_batch())?;
    drop(store);
    Ok(std::fs::read(dir.join(FILE_NAME))?)
}

/// The payload of a log record holding the sample store's writes ([`sample_store_file`]) as
/// one commit: applied again over the sample store, it changes nothing.
pub fn sample_log_payload() -> Vec<u8> {
    encode_logged(&sample_batch()).expect("the sample's writes encode")
}

/// Opens `store` as the store file in `dir` (which must not hold one) with a log beside it
/// whose records are `payloads`, following the last commit the file applied, and reads
/// everything in it as [`read_store_file`] does: opening applies the records again. So a
/// record whose checksum holds but whose contents are damaged (a bug writing it, or a forged
/// checksum) is applied, or refused with a typed error, never a panic. Returns how many
/// models loaded.
pub fn read_store_with_log(
    dir: &Path,
    store: &[u8],
    payloads: &[Vec<u8>],
) -> Result<usize, StoreError> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(FILE_NAME), store)?;
    let store = RedbStore::open(dir)?;
    let (id, applied) = store.db.catching(|| log_position(&store.db))?;
    drop(store);
    let mut log = Vec::new();
    for (seq, payload) in (applied + 1..).zip(payloads) {
        log.extend(wal::record(id, seq, payload));
    }
    std::fs::write(dir.join(wal::FILE_NAME), log)?;
    catching_damage(|| read_all(dir))
}

/// The writes of the sample store, as one commit in its domain.
fn sample_batch() -> [DomainWrites; 1] {
    let collection = sample_collection();
    let indexes = sample_indexes();
    let mut writes = vec![Write::PutCollection {
        collection: collection.clone(),
        config: CollectionConfig { world_create: false, ..CollectionConfig::default() },
    }];
    for (i, name) in ["ann", "bob"].into_iter().enumerate() {
        let user =
            User { id: UserId(name.into()), display_name: Some(name.into()), anonymous: false };
        writes.push(Write::PutUser { user });
        let identity = Identity {
            user: UserId(name.into()),
            display_name: Some(format!("{name} the user")),
            email: Some(format!("{name}@example.org")),
        };
        writes.push(Write::PutIdentity { identity, seen: Timestamp(i as i64 + 1) });
    }
    writes.push(Write::BindReplica { replica: ReplicaId(7), user: UserId("ann".into()) });
    for (i, id) in ["first", "second", "gone"].into_iter().enumerate() {
        let model = ModelId::new(id).expect("a valid model id");
        let mut grants = PermissionGrants::default();
        grants.users.insert(UserId("bob".into()), concord_protocol::Permissions::NONE);
        let record = ModelRecord {
            collection: collection.clone(),
            created_at: Timestamp(1),
            nonce: None,
            creator: Some(UserId("ann".into())),
            grants,
        };
        let entries = [
            ("n".to_owned(), Value::new(ElementId::new(0, 1), ValueData::Number(i as f64))),
            ("s".to_owned(), Value::new(ElementId::new(0, 2), ValueData::String(id.into()))),
        ];
        let root = Value::new(ElementId::new(0, 0), ValueData::Object(entries.into()));
        let data = Document::new(root).expect("a valid document");
        let keys = indexes[&collection]
            .iter()
            .map(|path| (path.clone(), IndexKey::of_document(path, &data)))
            .collect();
        let snapshot = ModelSnapshot {
            collection: collection.clone(),
            version: 0,
            created_at: Timestamp(1),
            modified_at: Timestamp(1),
            data,
        };
        writes.push(Write::CreateModel { model: model.clone(), record, snapshot });
        writes.push(Write::IndexModel {
            model: model.clone(),
            collection: collection.clone(),
            keys,
        });
        for version in 1..=3 {
            let kind =
                OperationKind::StringSplice { index: 0, delete_count: 0, insert: "x".into() };
            let operation = CommittedOperation {
                version,
                author: SessionId(format!("session-{version}")),
                timestamp: Timestamp(version as i64 + 1),
                operation: DiscreteOperation::new(ElementId::new(0, 2), kind).into(),
            };
            // Replica 7 is ann's: each commit also records her as the operation's user.
            let record = CommitRecord {
                model: model.clone(),
                operation,
                replica: ReplicaId(7),
                seq: version,
            };
            writes.push(Write::Commit(record));
        }
        writes.push(Write::Refusal(RefusalRecord {
            model: model.clone(),
            replica: ReplicaId(8),
            seq: 1,
            code: ErrorCode::INVALID_OPERATION,
        }));
        if id == "second" {
            let restored = ModelSnapshot {
                collection: collection.clone(),
                version: 2,
                created_at: Timestamp(1),
                modified_at: Timestamp(3),
                data: Document::new(Value::new(
                    ElementId::new(0, 0),
                    ValueData::Object(BTreeMap::new()),
                ))
                .expect("a valid document"),
            };
            writes.push(Write::Snapshot { model: model.clone(), snapshot: restored });
        }
        if id == "gone" {
            writes.push(Write::DeleteModel { model, at: Timestamp(9) });
        }
    }
    [DomainWrites { domain: Arc::from(SAMPLE_DOMAIN), writes }]
}

/// Opens `bytes` as the store file in `dir` (which must not hold one) and reads everything
/// in it as the server would, its reads guarded as the server guards them: opened with
/// indexes declared (their tables checked and rebuilt), every model loaded with its
/// collection, operations with their users and last decisions, its whole history read from
/// its checkpoints, every collection queried, every user, identity and replica owner read.
/// Returns how many models loaded; any damage is a typed error (history and query answers
/// carry theirs as error replies).
pub fn read_store_file(dir: &Path, bytes: &[u8]) -> Result<usize, StoreError> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(FILE_NAME), bytes)?;
    catching_damage(|| read_all(dir))
}

/// Each store is opened outside the guard around its reads, as the server's are, so that it
/// outlives a panic inside the database ([`super::Db`]).
fn read_all(dir: &Path) -> Result<usize, StoreError> {
    let store = RedbStore::open_indexed(dir, &sample_indexes())?;
    let keys = store.db.catching(|| read_indexed(&store))?;
    // Closed before the file is opened again, as at a server's stop and restart; a close that
    // meets damage ends the read there, as it would end the server's run.
    store.db.close()?;
    // Opened again without indexes: the index tables are dropped, whatever their damage.
    let store = RedbStore::open(dir)?;
    store.db.catching(|| {
        for key in &keys {
            store.operations(key, 0, u64::MAX, usize::MAX)?;
        }
        Ok(keys.len())
    })
}

/// Reads every record of `store` (opened with indexes); returns the models' keys.
fn read_indexed(store: &RedbStore) -> Result<Vec<ModelKey>, StoreError> {
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
    let mut domains = Vec::new();
    for entry in txn.open_table(COLLECTIONS).map_err(backend)?.iter().map_err(backend)? {
        let (key, _) = entry.map_err(backend)?;
        let (domain, collection) = key.value();
        if let Ok(collection) = CollectionId::new(collection) {
            store.collection(domain, &collection)?;
            domains.push((domain.to_owned(), collection));
        }
    }
    let config = HostConfig { indexes: sample_indexes(), ..HostConfig::default() };
    for (domain, collection) in &domains {
        store.identities(domain, 1_000)?;
        for text in [
            format!("SELECT * FROM {collection}"),
            format!("SELECT * FROM {collection} WHERE n >= 1 ORDER BY s LIMIT 2"),
        ] {
            let query = Query::parse(&text).expect("a valid query");
            let user = User { id: UserId("ann".into()), display_name: None, anonymous: false };
            let read = QueryRead { request: RequestId(1), user, query };
            store.query(domain, &read, &config, &QueryLimits::default());
        }
    }
    for key in &keys {
        let loaded = store.load(key)?;
        store.operations_with_users(key, 0, u64::MAX, usize::MAX)?;
        let super::Loaded::Model(model) = loaded else { continue };
        let through =
            (model.operations.last()).map_or(model.snapshot.version, |operation| operation.version);
        let mut read = HistoryRead {
            request: RequestId(1),
            model: key.model.clone(),
            collection: model.record.collection.clone(),
            created_at: model.record.created_at,
            through,
            modified_at: model.snapshot.modified_at,
            checkpoint_every: 2,
            query: HistoryQuery::Open,
        };
        store.history(key, &read);
        read.query = HistoryQuery::Fetch {
            start: HistoryStart::Version(0),
            checkpoint: true,
            max_operations: u32::MAX,
            max_bytes: u32::MAX,
        };
        store.history(key, &read);
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use redb::ReadableTableMetadata;

    use super::*;

    /// The sample file holds a record in every table the store has, so that damage to it
    /// reaches every record type; a table added without a sample record fails here.
    #[test]
    fn the_sample_store_has_a_record_in_every_table() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = sample_store_file(&dir.path().join("sample")).unwrap();
        let read = dir.path().join("read");
        assert_eq!(read_store_file(&read, &bytes).unwrap(), 2, "two models live, one deleted");
        // Opened as written (`read_store_file` drops the index tables at its end).
        let opened = dir.path().join("opened");
        std::fs::create_dir_all(&opened).unwrap();
        std::fs::write(opened.join(FILE_NAME), &bytes).unwrap();
        let store = RedbStore::open_indexed(&opened, &sample_indexes()).unwrap();
        let txn = store.db.begin_read().unwrap();
        let mut tables = Vec::new();
        for handle in txn.list_tables().unwrap() {
            let name = handle.name().to_owned();
            let rows = txn.open_untyped_table(handle).unwrap().len().unwrap();
            assert!(rows > 0, "table {name} is empty in the sample store");
            tables.push(name);
        }
        for table in [IDENTITIES.name(), CHECKPOINTS.name(), OPERATION_USERS.name()] {
            assert!(tables.iter().any(|t| t == table), "no {table} table in {tables:?}");
        }
    }

    /// Every record kind reads a record the store wrote back as written.
    #[test]
    fn every_record_kind_reads_what_the_store_writes() {
        let stored = StoredIdentity {
            identity: Identity {
                user: UserId("ann".into()),
                display_name: Some("Ann".into()),
                email: None,
            },
            seen: 4,
        };
        let payload = postcard::to_stdvec(&stored).unwrap();
        assert_eq!(read_sealed(RecordKind::Identity, &payload).unwrap(), payload);
        let keys = IndexedKeys { collection: "notes".into(), entries: vec![("n".into(), vec![1])] };
        let payload = postcard::to_stdvec(&keys).unwrap();
        assert_eq!(read_sealed(RecordKind::ModelIndexKeys, &payload).unwrap(), payload);
        // A truncated identity is damage, not a value.
        let payload = postcard::to_stdvec(&stored).unwrap();
        assert!(read_sealed(RecordKind::Identity, &payload[..payload.len() - 1]).is_err());
    }
}
