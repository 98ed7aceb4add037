//! The server's embedded store: one redb file in the data directory holding every domain's
//! models (record, latest snapshot, operation log, last seq per replica), deleted ids,
//! collections and users.
//!
//! Writes go through one writer thread ([`Writer`]) that takes every job queued meanwhile
//! into one `Durability::Immediate` transaction (group commit across models) and only then
//! hands over the job's deliveries — the messages that reveal what the job wrote. So nothing
//! a client hears of is ever lost by a crash, and one fsync covers many operations. A failed
//! write stops the writer for good (fail-stop): later jobs fail, nothing is delivered, and
//! the server shuts down rather than run ahead of its disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use concord_ot::ReplicaId;
use concord_protocol::{CollectionId, Commit, CommittedOperation, ModelSnapshot, Timestamp};
use concord_sync::host::{CollectionConfig, Loaded, ModelRecord, StoredModel, Write};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::outbox::Delivery;
use crate::types::ModelKey;

/// The format of the server's store; bumped on any change of a table or record.
const FORMAT_VERSION: u64 = 1;
const FILE_NAME: &str = "concord.redb";

type ModelKeyT<'a> = (&'a str, &'a str);
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const MODELS: TableDefinition<ModelKeyT, &[u8]> = TableDefinition::new("models");
const SNAPSHOTS: TableDefinition<ModelKeyT, &[u8]> = TableDefinition::new("snapshots");
const OPERATIONS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("operations");
const REPLICAS: TableDefinition<(&str, &str, u64), (u64, u64, i64)> =
    TableDefinition::new("replicas");
const DELETED: TableDefinition<ModelKeyT, i64> = TableDefinition::new("deleted");
const COLLECTIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("collections");
const USERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("users");

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("the server store is in use by another process: {0}")]
    InUse(String),
    #[error("the server store is corrupt: {0}")]
    Corrupt(String),
    #[error("the server store has format {found}; this server reads format {supported} and older")]
    NewerFormat { found: u64, supported: u64 },
    #[error("server store I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("server store failed: {0}")]
    Backend(String),
    #[error("an earlier write failed; the server store takes no more writes")]
    Stopped,
}

fn backend(error: impl Into<redb::Error>) -> StoreError {
    match error.into() {
        redb::Error::Io(io) => StoreError::Io(io),
        redb::Error::Corrupted(message) => StoreError::Corrupt(message),
        redb::Error::DatabaseAlreadyOpen => StoreError::InUse("database already open".into()),
        other => StoreError::Backend(other.to_string()),
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard cannot fail on these plain types into a Vec.
    postcard::to_stdvec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// The read side, shared by every task; reads never wait for the writer.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    db: Arc<Database>,
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = Database::create(dir.join(FILE_NAME)).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::InUse(format!("{} is open in another process", dir.display()))
            }
            other => backend(other),
        })?;
        let mut txn = db.begin_write().map_err(backend)?;
        txn.set_durability(Durability::Immediate).map_err(backend)?;
        {
            let mut meta = txn.open_table(META).map_err(backend)?;
            let found = meta.get("format").map_err(backend)?.map(|v| v.value());
            match found {
                Some(found) if found > FORMAT_VERSION => {
                    return Err(StoreError::NewerFormat { found, supported: FORMAT_VERSION });
                }
                Some(_) => {}
                None => {
                    meta.insert("format", FORMAT_VERSION).map_err(backend)?;
                }
            }
            // Create every table, so that readers never meet a missing one.
            txn.open_table(MODELS).map_err(backend)?;
            txn.open_table(SNAPSHOTS).map_err(backend)?;
            txn.open_table(OPERATIONS).map_err(backend)?;
            txn.open_table(REPLICAS).map_err(backend)?;
            txn.open_table(DELETED).map_err(backend)?;
            txn.open_table(COLLECTIONS).map_err(backend)?;
            txn.open_table(USERS).map_err(backend)?;
        }
        txn.commit().map_err(backend)?;
        Ok(Store { db: Arc::new(db) })
    }

    pub(crate) fn load(&self, key: &ModelKey) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let k = key.as_tuple();
        let models = txn.open_table(MODELS).map_err(backend)?;
        let Some(record) = models.get(k).map_err(backend)? else {
            let deleted =
                txn.open_table(DELETED).map_err(backend)?.get(k).map_err(backend)?.is_some();
            return Ok(Loaded::Absent { deleted });
        };
        let record: ModelRecord = decode(record.value(), "model record")?;
        let collection = read_collection(&txn, &key.domain, &record.collection)?;
        let snapshots = txn.open_table(SNAPSHOTS).map_err(backend)?;
        let snapshot = snapshots
            .get(k)
            .map_err(backend)?
            .ok_or_else(|| StoreError::Corrupt(format!("model {} has no snapshot", key.model)))?;
        let snapshot: ModelSnapshot = decode(snapshot.value(), "snapshot")?;
        let operations = read_operations(&txn, key, snapshot.version, u64::MAX, usize::MAX)?;
        let replicas = txn.open_table(REPLICAS).map_err(backend)?;
        let mut last_commits = BTreeMap::new();
        for entry in replicas.range((k.0, k.1, 0)..=(k.0, k.1, u64::MAX)).map_err(backend)? {
            let (replica, value) = entry.map_err(backend)?;
            let (seq, version, timestamp) = value.value();
            let commit = Commit { version, timestamp: Timestamp(timestamp) };
            last_commits.insert(ReplicaId(replica.value().2), (seq, commit));
        }
        Ok(Loaded::Model(Box::new(StoredModel {
            record,
            collection,
            snapshot,
            operations,
            last_commits,
        })))
    }

    /// The committed operations in `(after, through]`, at most `limit` of them.
    pub(crate) fn operations(
        &self,
        key: &ModelKey,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<CommittedOperation>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        read_operations(&txn, key, after, through, limit)
    }

    pub(crate) fn collection(
        &self,
        domain: &str,
        collection: &CollectionId,
    ) -> Result<Option<CollectionConfig>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        read_collection(&txn, domain, collection)
    }

    /// A user seen in `domain` (read back only by the format tests so far).
    #[cfg(test)]
    pub(crate) fn user(
        &self,
        domain: &str,
        user: &concord_protocol::UserId,
    ) -> Result<Option<concord_protocol::User>, StoreError> {
        let txn = self.db.begin_read().map_err(backend)?;
        let table = txn.open_table(USERS).map_err(backend)?;
        match table.get((domain, user.0.as_str())).map_err(backend)? {
            Some(bytes) => Ok(Some(decode(bytes.value(), "user")?)),
            None => Ok(None),
        }
    }

    /// Starts the writer thread; it stops when every [`Writer`] is dropped, or for good at
    /// its first failed write (cancelling `on_failure`).
    pub(crate) fn start_writer(
        &self,
        on_failure: CancellationToken,
    ) -> Result<(Writer, std::thread::JoinHandle<()>), StoreError> {
        let (sender, receiver) = mpsc::channel(WRITER_QUEUE);
        let db = self.db.clone();
        let thread = std::thread::Builder::new()
            .name("concord-store-writer".into())
            .spawn(move || write_loop(&db, receiver, on_failure))?;
        Ok((Writer { sender }, thread))
    }
}

fn read_collection(
    txn: &redb::ReadTransaction,
    domain: &str,
    collection: &CollectionId,
) -> Result<Option<CollectionConfig>, StoreError> {
    let table = txn.open_table(COLLECTIONS).map_err(backend)?;
    match table.get((domain, collection.as_str())).map_err(backend)? {
        Some(bytes) => Ok(Some(decode(bytes.value(), "collection")?)),
        None => Ok(None),
    }
}

fn read_operations(
    txn: &redb::ReadTransaction,
    key: &ModelKey,
    after: u64,
    through: u64,
    limit: usize,
) -> Result<Vec<CommittedOperation>, StoreError> {
    let (domain, model) = key.as_tuple();
    let table = txn.open_table(OPERATIONS).map_err(backend)?;
    let start = after.saturating_add(1);
    if start > through {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in table.range((domain, model, start)..=(domain, model, through)).map_err(backend)? {
        if out.len() >= limit {
            break;
        }
        let (_, bytes) = entry.map_err(backend)?;
        out.push(decode(bytes.value(), "operation")?);
    }
    Ok(out)
}

/// Jobs queued for the writer before senders wait.
const WRITER_QUEUE: usize = 8_192;
/// Jobs folded into one transaction at most.
const MAX_GROUP: usize = 4_096;

/// Writes to one domain's models, then what may be said once they are durable.
#[derive(Debug, Default)]
pub(crate) struct Job {
    pub(crate) domain: Arc<str>,
    pub(crate) writes: Vec<Write>,
    pub(crate) deliveries: Vec<Delivery>,
    /// Told once the writes are durable (or failed).
    pub(crate) done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// The handle model tasks queue jobs on. Jobs are durable, and delivered, in queue order.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    sender: mpsc::Sender<Job>,
}

impl Writer {
    /// Queues a job, waiting if the writer is far behind.
    pub(crate) async fn submit(&self, job: Job) -> Result<(), StoreError> {
        self.sender.send(job).await.map_err(|_| StoreError::Stopped)
    }

    /// Waits until everything queued before is durable.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.submit(Job { done: Some(done), ..Job::default() }).await?;
        wait.await.map_err(|_| StoreError::Stopped)?
    }
}

fn write_loop(db: &Database, mut receiver: mpsc::Receiver<Job>, on_failure: CancellationToken) {
    let mut group = Vec::new();
    while let Some(first) = receiver.blocking_recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let result = if group.iter().any(|job| !job.writes.is_empty()) {
            write_group(db, &group)
        } else {
            Ok(())
        };
        match result {
            Ok(()) => {
                for job in group.drain(..) {
                    for delivery in job.deliveries {
                        delivery.deliver();
                    }
                    if let Some(done) = job.done {
                        let _ = done.send(Ok(()));
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, "a store write failed; the server stops taking writes");
                on_failure.cancel();
                let error = error.to_string();
                for job in group.drain(..) {
                    if let Some(done) = job.done {
                        let _ = done.send(Err(StoreError::Backend(error.clone())));
                    }
                }
                receiver.close();
                while let Ok(job) = receiver.try_recv() {
                    if let Some(done) = job.done {
                        let _ = done.send(Err(StoreError::Stopped));
                    }
                }
                return;
            }
        }
    }
}

fn write_group(db: &Database, group: &[Job]) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::Immediate).map_err(backend)?;
    {
        let mut models = txn.open_table(MODELS).map_err(backend)?;
        let mut snapshots = txn.open_table(SNAPSHOTS).map_err(backend)?;
        let mut operations = txn.open_table(OPERATIONS).map_err(backend)?;
        let mut replicas = txn.open_table(REPLICAS).map_err(backend)?;
        let mut deleted = txn.open_table(DELETED).map_err(backend)?;
        let mut collections = txn.open_table(COLLECTIONS).map_err(backend)?;
        let mut users = txn.open_table(USERS).map_err(backend)?;
        for job in group {
            let domain = &*job.domain;
            for write in &job.writes {
                match write {
                    Write::CreateModel { model, record, snapshot } => {
                        let k = (domain, model.as_str());
                        models.insert(k, encode(record).as_slice()).map_err(backend)?;
                        snapshots.insert(k, encode(snapshot).as_slice()).map_err(backend)?;
                    }
                    Write::Commit(record) => {
                        let model = record.model.as_str();
                        let version = record.operation.version;
                        let bytes = encode(&record.operation);
                        operations
                            .insert((domain, model, version), bytes.as_slice())
                            .map_err(backend)?;
                        let value = (record.seq, version, record.operation.timestamp.0);
                        replicas
                            .insert((domain, model, record.replica.0), value)
                            .map_err(backend)?;
                    }
                    Write::Snapshot { model, snapshot } => {
                        let k = (domain, model.as_str());
                        snapshots.insert(k, encode(snapshot).as_slice()).map_err(backend)?;
                    }
                    Write::SetGrants { model, record } => {
                        let k = (domain, model.as_str());
                        models.insert(k, encode(record).as_slice()).map_err(backend)?;
                    }
                    Write::DeleteModel { model, at } => {
                        let model = model.as_str();
                        models.remove((domain, model)).map_err(backend)?;
                        snapshots.remove((domain, model)).map_err(backend)?;
                        operations
                            .retain_in((domain, model, 0)..=(domain, model, u64::MAX), |_, _| false)
                            .map_err(backend)?;
                        replicas
                            .retain_in((domain, model, 0)..=(domain, model, u64::MAX), |_, _| false)
                            .map_err(backend)?;
                        deleted.insert((domain, model), at.0).map_err(backend)?;
                    }
                    Write::PutCollection { collection, config } => {
                        let k = (domain, collection.as_str());
                        collections.insert(k, encode(config).as_slice()).map_err(backend)?;
                    }
                    Write::PutUser { user } => {
                        let k = (domain, user.id.0.as_str());
                        users.insert(k, encode(user).as_slice()).map_err(backend)?;
                    }
                    // Not stored yet: the host does not bind replicas yet either.
                    Write::BindReplica { .. } => {}
                }
            }
        }
    }
    txn.commit().map_err(backend)
}

impl From<TableError> for StoreError {
    fn from(error: TableError) -> StoreError {
        backend(error)
    }
}
