//! The server's embedded store: one redb file in the data directory holding every domain's
//! models (record, latest snapshot, operation log with each operation's user, checkpoints,
//! last decided seq per replica), deleted ids, collections, users and which user each replica
//! id belongs to. Nothing of a model's history is discarded while the model exists: its
//! checkpoints (the model as created, then every snapshot) and operations rebuild any
//! version (`history`).
//!
//! Every record carries a checksum (`record`), so that bytes damaged outside the server are
//! reported as [`StoreError::CorruptRecord`] naming the model, never served; an empty or
//! foreign file where the store should be is refused, never replaced. Older formats are
//! migrated on open (`migrate`).
//!
//! Writes go through one writer thread ([`Writer`]) that takes every job queued meanwhile
//! into one transaction (group commit across models), makes it durable, and only then hands
//! over the job's deliveries — the messages that reveal what the job wrote. So nothing a
//! client hears of is ever lost by a crash, and one flush covers many operations. On redb a
//! transaction is made durable by logging it (`wal`): one appended record and one flush
//! instead of redb's own durable commit of every page it touched. It is applied to redb only
//! after its deliveries are handed over, reads waiting for it meanwhile ([`Log`]); a taken
//! version is refused before the record is logged. A failed
//! redb write is a disk fault and stops the writer for good (fail-stop): later jobs fail,
//! nothing is delivered, and the server shuts down rather than run ahead of its disk. (A
//! PostgreSQL commit that finds the database unavailable is retried; see [`start_writer`].)

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use concord_ot::ReplicaId;
use concord_protocol::{
    CollectionId, Commit, CommittedOperation, ErrorCode, HistoryOperation, Identity, ModelId,
    ModelSnapshot, ServerMessage, Timestamp, UserId,
};
use concord_sync::Decision;
use concord_sync::host::{
    CollectionConfig, HistoryRead, HostConfig, Loaded, ModelRecord, QueryLimits, QueryModelData,
    QueryRead, ReadFailure, StoredModel, Write,
};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError, TableHandle,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::outbox::Delivery;
use crate::types::ModelKey;

mod backup;
pub mod benching;
#[cfg(feature = "postgres")]
pub(crate) mod copy;
pub mod fuzzing;
mod history;
mod migrate;
#[cfg(feature = "postgres")]
pub(crate) mod postgres;
mod query;
#[cfg(test)]
mod query_tests;
mod record;
#[cfg(test)]
mod tests;
mod wal;

pub use backup::Backup;
pub(crate) use backup::backup_written_at;
use query::{COLLECTION_MODELS, INDEX_ENTRIES, INDEXES, IndexTables, MODEL_INDEX_KEYS};
use record::{Damage, seal, unseal};

/// Everything the server persists, behind one interface: the server holds a [`Store`] and
/// never a backend. Two backends implement it: [`RedbStore`] (one embedded file, the
/// default) and, with the `postgres` feature, `postgres::PostgresStore`.
///
/// What every backend guarantees (checked by the contract suite, `store_contract_tests.rs`):
/// - [`commit`](ServerStore::commit) makes its whole batch durable in one transaction, or
///   none of it, and returns only once it is durable; the writer ([`start_writer`]) hands
///   it every job queued meanwhile, so that concurrent models share one commit.
/// - Reads see every commit that returned, and history and query answers each read one
///   consistent state.
/// - A record damaged outside the server is reported ([`StoreError::CorruptRecord`] naming
///   its model), never served.
#[async_trait::async_trait]
pub(crate) trait ServerStore: Send + Sync + std::fmt::Debug + 'static {
    /// A model as stored, or whether it was deleted.
    async fn load(&self, key: &ModelKey) -> Result<Loaded, StoreError>;
    /// The committed operations in `(after, through]`, at most `limit` of them, each with
    /// the user whose replica submitted it (`None` for operations stored before the store
    /// kept users).
    async fn operations(
        &self,
        key: &ModelKey,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<HistoryOperation>, StoreError>;
    async fn collection(
        &self,
        domain: &str,
        collection: &CollectionId,
    ) -> Result<Option<CollectionConfig>, StoreError>;
    /// The user `replica` belongs to in `domain`: whoever first used it (`Write::BindReplica`).
    async fn replica_owner(
        &self,
        domain: &str,
        replica: ReplicaId,
    ) -> Result<Option<UserId>, StoreError>;
    /// A user seen in `domain` (the server writes users but reads none back yet; the
    /// contract suite does).
    #[allow(dead_code)]
    async fn user(
        &self,
        domain: &str,
        user: &UserId,
    ) -> Result<Option<concord_protocol::User>, StoreError>;
    /// The identities stored in `domain` (`Write::PutIdentity`): the `max_users` learned
    /// last, oldest first, so that an identity host restoring them in order keeps the
    /// newest within its bounds.
    async fn identities(&self, domain: &str, max_users: usize)
    -> Result<Vec<Identity>, StoreError>;
    /// The keys `(domain, model)` of stored models after `after`, in key order, at most
    /// `limit` of them: every model the store holds, page by page (`concord store check`).
    async fn model_keys(
        &self,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError>;
    /// The newest checkpoint of a model at or before `version`: its version, and the
    /// checkpoint or the damage that keeps it from being read, so that a caller can step back
    /// past a damaged one (`concord store rebuild-snapshot`).
    async fn checkpoint_at_or_before(
        &self,
        key: &ModelKey,
        version: u64,
    ) -> Result<Option<StoredCheckpoint>, StoreError>;
    /// The answer to a history request the model host accepted (an error reply if the
    /// store fails).
    async fn history(&self, key: &ModelKey, read: &HistoryRead) -> ServerMessage;
    /// The answer to a query the session host accepted, in `domain`.
    async fn query(
        &self,
        domain: &str,
        read: &QueryRead,
        config: &Arc<HostConfig>,
        limits: &QueryLimits,
    ) -> ServerMessage;
    /// Writes a copy of the store as the last applied commit left it into `dir` (created
    /// 0700 if missing), as a store file that opens on its own; commits and reads go on
    /// meanwhile (`Backups::write`).
    async fn back_up(&self, _dir: &Path) -> Result<Backup, StoreError> {
        Err(StoreError::NotSupported(
            "backing up PostgreSQL: use its own tools (pg_dump, or a base backup)",
        ))
    }
    /// Makes `batch` durable in one transaction, in order. Called only from the writer's
    /// own thread ([`start_writer`]), which does nothing else meanwhile: a backend whose
    /// calls block may block it.
    async fn commit(&self, batch: &[DomainWrites]) -> Result<(), StoreError>;

    /// [`commit`](ServerStore::commit) in two halves, for the writer, which acknowledges the
    /// batch in between: makes it durable (refusing a taken version before anything is
    /// durable), leaving it unapplied where that is quicker, with reads waiting until
    /// [`apply_logged`](ServerStore::apply_logged) applies it.
    async fn log_commit(&self, batch: &[DomainWrites]) -> Result<Logged, StoreError> {
        self.commit(batch).await.map(|()| Logged::Applied)
    }

    /// Applies the batch [`log_commit`](ServerStore::log_commit) left unapplied. A failure
    /// leaves the store without a durable, maybe acknowledged, commit: it stops the writer.
    fn apply_logged(&self, _batch: &[DomainWrites]) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A checkpoint's version, and the checkpoint or why it cannot be read.
pub(crate) type StoredCheckpoint = (u64, Result<ModelSnapshot, StoreError>);

/// The store the server runs on, whichever backend it is.
pub(crate) type Store = Arc<dyn ServerStore>;

/// One domain's writes in a commit.
#[derive(Debug, Clone)]
pub(crate) struct DomainWrites {
    pub(crate) domain: Arc<str>,
    pub(crate) writes: Vec<Write>,
}

/// The reply to `read` when the store could not even start to answer it.
fn failed_history(read: &HistoryRead, error: StoreError) -> ServerMessage {
    concord_sync::host::history_reply(read, &mut history::Failed(error.into()))
}

/// The reply to `read` when the store could not even start to answer it.
fn failed_query(
    read: &QueryRead,
    config: &HostConfig,
    limits: &QueryLimits,
    error: StoreError,
) -> ServerMessage {
    concord_sync::host::query_reply(read, config, limits, &mut history::Failed(error.into()))
}

/// A read the host asked for, failed: `unavailable` when the store could not be reached (the
/// same request may succeed later), a failure of the store otherwise.
impl From<&StoreError> for ReadFailure {
    fn from(error: &StoreError) -> ReadFailure {
        ReadFailure {
            unavailable: matches!(error, StoreError::Unavailable(_)),
            message: error.to_string(),
        }
    }
}

impl From<StoreError> for ReadFailure {
    fn from(error: StoreError) -> ReadFailure {
        ReadFailure::from(&error)
    }
}

/// The format of the server's store; bumped on any change of a table or record. Format 1
/// stored plain records and no replica owners; format 2 kept only each replica's last
/// commit, not its refusals; format 3 kept no checkpoints and no operation users; format 4
/// had no collection membership and no indexes (`query`); format 5 kept no identities;
/// format 6 made each commit durable in redb itself, with no log beside it (`wal`);
/// `migrate` brings them all to this one.
const FORMAT_VERSION: u64 = 7;
pub(crate) const FILE_NAME: &str = "concord.redb";

type ModelKeyT<'a> = (&'a str, &'a str);
/// `format`; `wal_id`, the id of this store's log (drawn at creation); `wal_applied`, the
/// seq of the last commit applied (logged or not).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
// Every `&[u8]` value below is a checksummed record (`record::seal`).
const MODELS: TableDefinition<ModelKeyT, &[u8]> = TableDefinition::new("models");
const SNAPSHOTS: TableDefinition<ModelKeyT, &[u8]> = TableDefinition::new("snapshots");
const OPERATIONS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("operations");
/// `(domain, model, replica)` → the replica's last decided seq in the model and what was
/// decided ([`StoredDecision`]).
const LAST_DECISIONS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("last_decisions");
const DELETED: TableDefinition<ModelKeyT, i64> = TableDefinition::new("deleted");
const COLLECTIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("collections");
const USERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("users");
/// `(domain, replica)` → the user the replica belongs to (written once, never replaced).
const REPLICA_OWNERS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("replica_owners");
/// `(domain, model, version)` → the model at that version (a `ModelSnapshot`): the model as
/// created, then every snapshot written; never discarded while the model exists.
const CHECKPOINTS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("checkpoints");
/// `(domain, model, version)` → the user whose replica submitted that operation.
const OPERATION_USERS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("operation_users");
/// `(domain, user)` → the user's identity as last learned and when ([`StoredIdentity`]).
const IDENTITIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("identities");

/// A user's display name and email as stored, with when they were learned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct StoredIdentity {
    identity: Identity,
    seen: i64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("the server store is in use by another process: {0}")]
    InUse(String),
    #[error("not supported by this store: {0}")]
    NotSupported(&'static str),
    #[error("the server store is corrupt: {0}")]
    Corrupt(String),
    /// A record failed its checksum or does not decode: the file was changed outside the
    /// server. `model` names the model the record belongs to, when it belongs to one; loading
    /// that model fails, other models are served.
    #[error("the server store holds a corrupt record ({}): {record}", place(.domain, .model.as_ref()))]
    CorruptRecord { domain: String, model: Option<ModelId>, record: String },
    /// The file at the store's path is empty or is not a Concord store: it is refused, never
    /// replaced by a fresh store.
    #[error(
        "{} is not a Concord server store ({reason}); restore the file from a backup, or move it away to start an empty store",
        .path.display()
    )]
    NotAStore { path: PathBuf, reason: String },
    #[error("the server store has format {found}; this server reads format {supported} and older")]
    NewerFormat { found: u64, supported: u64 },
    /// The PostgreSQL database was migrated by a newer server.
    #[error(
        "the PostgreSQL database has Concord schema {found}; this server knows schema {supported} and older: run a newer server, or restore the database"
    )]
    NewerSchema { found: i64, supported: i64 },
    #[error("server store I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("server store failed: {0}")]
    Backend(String),
    #[error("an earlier write failed; the server store takes no more writes")]
    Stopped,
    /// The store cannot be reached for now (PostgreSQL restarting, a connection lost): the
    /// writer retries a commit that failed so for a while (`ServerConfig::store_retry`).
    #[error("the server store is unavailable: {0}")]
    Unavailable(String),
    /// A different operation is already stored at this version: appending one there is
    /// refused, and the commit holding it writes nothing.
    #[error(
        "the server store already holds a different operation at version {version} of {}",
        place(.domain, Some(.model))
    )]
    VersionTaken { domain: String, model: ModelId, version: u64 },
    /// Another server started on the same PostgreSQL database after this one: its writes
    /// are refused (a database has one writing server at a time), and this one stops.
    #[error(
        "another server started on this PostgreSQL database (writer epoch {current}, this server's {ours}); this server takes no more writes"
    )]
    Fenced { ours: i64, current: i64 },
    /// This node no longer holds the lease of a model the commit writes (another node took
    /// it over, or it ran out): the commit writes nothing, and the model's sessions are
    /// closed so that their clients resend to the model's new node (`docs/cluster.md`).
    #[error(
        "this node no longer holds the lease of {}; another node serves it",
        place(.domain, Some(.model))
    )]
    LeaseLost { domain: String, model: ModelId },
}

impl StoreError {
    /// Whether the server can go on after a commit failed so: the store is sound, only
    /// this commit's jobs are lost (their sessions are told, their models reloaded).
    fn spares_the_server(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable(_)
                | StoreError::VersionTaken { .. }
                | StoreError::LeaseLost { .. }
        )
    }
}

/// What the server decided about a replica's last submission to a model, as stored (with
/// its seq: `(seq, StoredDecision)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum StoredDecision {
    Committed { version: u64, timestamp: i64 },
    Refused { code: u16 },
}

impl From<Decision> for StoredDecision {
    fn from(decision: Decision) -> StoredDecision {
        match decision {
            Decision::Committed(commit) => {
                StoredDecision::Committed { version: commit.version, timestamp: commit.timestamp.0 }
            }
            Decision::Refused(code) => StoredDecision::Refused { code: code.0 },
        }
    }
}

impl From<StoredDecision> for Decision {
    fn from(stored: StoredDecision) -> Decision {
        match stored {
            StoredDecision::Committed { version, timestamp } => {
                Decision::Committed(Commit { version, timestamp: Timestamp(timestamp) })
            }
            StoredDecision::Refused { code } => Decision::Refused(ErrorCode(code)),
        }
    }
}

fn place(domain: &str, model: Option<&ModelId>) -> String {
    match model {
        Some(model) => format!("model {model} in domain {domain}"),
        None => format!("domain {domain}"),
    }
}

fn backend(error: impl Into<redb::Error>) -> StoreError {
    match error.into() {
        redb::Error::Io(io) => StoreError::Io(io),
        redb::Error::Corrupted(message) => StoreError::Corrupt(message),
        redb::Error::DatabaseAlreadyOpen => StoreError::InUse("database already open".into()),
        other => StoreError::Backend(other.to_string()),
    }
}

/// Runs a read of the store, reporting a panic inside it as a damaged store. redb trusts
/// the keys it reads back: one damaged on disk (a name that is not UTF-8, a length that runs
/// past its page) panics inside it instead of returning an error. Found by the
/// `server_store_file` fuzz target.
pub(crate) fn catching_damage<T>(
    read: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(read)).unwrap_or_else(damage)
}

/// The error for a panic inside the database.
fn damage<T>(panic: Box<dyn std::any::Any + Send>) -> Result<T, StoreError> {
    let cause = (panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    Err(StoreError::Corrupt(format!("reading it failed inside the database: {cause}")))
}

/// The error for a damaged record of `model` (or of the domain) described by `record`.
fn corrupt(domain: &str, model: Option<&ModelId>, record: String, damage: Damage) -> StoreError {
    StoreError::CorruptRecord {
        domain: domain.to_owned(),
        model: model.cloned(),
        record: format!("{record}: {damage}"),
    }
}

/// A model's state for queries: its latest snapshot with the operations stored after it
/// (in order) applied. Both stores read them their own way and fold them here.
fn current_state(
    domain: &str,
    model: &ModelId,
    snapshot: ModelSnapshot,
    operations: impl IntoIterator<Item = Result<CommittedOperation, StoreError>>,
) -> Result<QueryModelData, StoreError> {
    let mut document = snapshot.data;
    let (mut version, mut modified) = (snapshot.version, snapshot.modified_at);
    for operation in operations {
        let operation = operation?;
        document.apply_without_old(&operation.operation).map_err(|e| {
            StoreError::CorruptRecord {
                domain: domain.to_owned(),
                model: Some(model.clone()),
                record: format!("operation {} does not apply: {e}", operation.version),
            }
        })?;
        version = operation.version;
        modified = operation.timestamp;
    }
    Ok(QueryModelData::of(&document, version, snapshot.created_at, modified))
}

/// The redb database, closed without ever taking the process down. redb panics on some
/// damage it reads back ([`catching_damage`]); closing a database it panicked in panics
/// again, more than once, and a panic while another unwinds aborts the process (found by
/// the `server_store_file` fuzz target). So a database that panicked ([`Db::catching`]),
/// or that is dropped during a panic, is left unclosed: the OS closes its file at exit, and
/// redb repairs an unclean close at the next open. A close that panics by itself is caught.
#[derive(Debug)]
pub(crate) struct Db {
    database: Option<Database>,
    damaged: std::sync::atomic::AtomicBool,
}

impl Db {
    fn new(database: Database) -> Db {
        Db { database: Some(database), damaged: Default::default() }
    }

    /// Runs `f`, which uses this database, reporting a panic inside it as a damaged store
    /// (as [`catching_damage`]) and remembering it, so that the database is not closed.
    pub(crate) fn catching<T>(
        &self,
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
            self.damaged.store(true, Ordering::Relaxed);
            damage(panic)
        })
    }

    /// Closes the database now, if this is its last handle, reporting a close that panics as
    /// damage: closing writes the allocator's state, which may meet damage nothing read before.
    pub(crate) fn close(self: Arc<Db>) -> Result<(), StoreError> {
        let Ok(mut db) = Arc::try_unwrap(self) else { return Ok(()) };
        let Some(database) = db.database.take() else { return Ok(()) };
        if *db.damaged.get_mut() {
            std::mem::forget(database);
            return Err(StoreError::Corrupt("the database was damaged".into()));
        }
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| database.close().map_err(backend)))
            .unwrap_or_else(damage)
    }
}

impl std::ops::Deref for Db {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.database.as_ref().expect("taken only when dropped")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let Some(database) = self.database.take() else { return };
        if std::thread::panicking() || *self.damaged.get_mut() {
            std::mem::forget(database);
        } else if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(database))).is_err()
        {
            // Closing writes the allocator's state, which may meet damage nothing read before.
            tracing::error!("closing the store file failed inside the database (it is damaged)");
        }
    }
}

/// A table of a write transaction that is forgotten, not dropped, while a panic unwinds: its
/// destructor takes a lock of the transaction that a panic inside redb (opening another
/// table of a damaged file, say) may have poisoned, and a second panic while the first
/// unwinds aborts the process (found by the `server_store_file` fuzz target).
pub(crate) struct Unwound<T>(Option<T>);

impl<T> std::ops::Deref for Unwound<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_ref().expect("taken only when dropped")
    }
}

impl<T> std::ops::DerefMut for Unwound<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.as_mut().expect("taken only when dropped")
    }
}

impl<T> Drop for Unwound<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take()
            && std::thread::panicking()
        {
            std::mem::forget(value);
        }
    }
}

/// Opens the tables of write transactions as [`Unwound`].
pub(crate) trait WriteTables {
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        definition: TableDefinition<'_, K, V>,
    ) -> Result<Unwound<redb::Table<'_, K, V>>, StoreError>;
}

impl WriteTables for redb::WriteTransaction {
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        definition: TableDefinition<'_, K, V>,
    ) -> Result<Unwound<redb::Table<'_, K, V>>, StoreError> {
        Ok(Unwound(Some(self.open_table(definition).map_err(backend)?)))
    }
}

/// What reads and commits get once a commit failed inside the database or its apply failed.
fn earlier_commit_failed() -> StoreError {
    StoreError::Backend("an earlier commit failed inside the database".into())
}

/// The read side, shared by every task; reads wait for the writer only while a commit is
/// acknowledged but not yet applied to redb ([`Log`]).
#[derive(Debug, Clone)]
pub(crate) struct RedbStore {
    db: Arc<Db>,
    log: Arc<Log>,
}

/// The store's log, and the gate every read begins behind. A commit is logged (durable),
/// then acknowledged, then applied to redb ([`RedbStore::log_commit`], then
/// [`RedbStore::apply_logged`]): applying took a fifth to a quarter of a commit's time,
/// and clients need not wait for it. Between the two, reads wait ([`RedbStore::begin_read`]), so that
/// none sees the store without a commit that was acknowledged; and none ever sees one that
/// a crash could take back, since redb shows a commit only once it is logged.
#[derive(Debug)]
struct Log {
    /// Appended to only by the writer's thread.
    wal: std::sync::Mutex<wal::Wal>,
    gate: std::sync::Mutex<Gate>,
    opened: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct Gate {
    /// The seq of a logged commit not yet applied to redb: reads wait for it.
    unapplied: Option<u64>,
    /// Applying a logged commit failed: redb lacks it, so no read is answered again.
    failed: bool,
}

/// What [`RedbStore::log_commit`] left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "reads wait until a logged commit is applied"]
pub(crate) enum Logged {
    /// The commit is durable and applied: reads see it.
    Applied,
    /// The commit is durable, and reads wait until [`RedbStore::apply_logged`] applies it.
    Unapplied,
}

impl RedbStore {
    /// Opens the store in `dir`, creating the directory (0700 on Unix) and a new store file
    /// (0600) only if none exists. An existing file that is empty or not a Concord store is
    /// refused ([`StoreError::NotAStore`]); one of an older format is migrated in one
    /// transaction, one of a newer format refused; one damaged since it was written is
    /// refused as corrupt: the open checks every page ([`open_file`]).
    pub(crate) fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        RedbStore::open_indexed(dir, &BTreeMap::new())
    }

    /// [`RedbStore::open`], then builds the `indexes` declared per collection that the store
    /// does not have yet (over every stored model) and drops those no longer declared.
    pub(crate) fn open_indexed(
        dir: &Path,
        indexes: &BTreeMap<CollectionId, Vec<concord_query::Path>>,
    ) -> Result<RedbStore, StoreError> {
        create_private_dir(dir)?;
        let path = dir.join(FILE_NAME);
        if !path.try_exists()? {
            create_file(dir, &path)?;
        }
        let db = Db::new(catching_damage(|| open_file(&path))?);
        warn_if_readable_by_others(&path);
        let wal = db.catching(|| {
            let found = recorded_format(&db, &path)?;
            if found > FORMAT_VERSION {
                return Err(StoreError::NewerFormat { found, supported: FORMAT_VERSION });
            }
            if found < FORMAT_VERSION {
                migrate::to_current(&db, found)?;
                tracing::info!(from = found, to = FORMAT_VERSION, "migrated the server store");
            }
            let wal = recover(&db, dir)?;
            query::sync_indexes(&db, indexes)?;
            Ok(wal)
        })?;
        let log = Log {
            wal: std::sync::Mutex::new(wal),
            gate: Default::default(),
            opened: Default::default(),
        };
        Ok(RedbStore { db: Arc::new(db), log: Arc::new(log) })
    }

    /// Begins a read of what was logged and applied, waiting while a logged commit is not
    /// yet applied (see [`Log`]).
    fn begin_read(&self) -> Result<redb::ReadTransaction, StoreError> {
        let mut gate = self.log.gate.lock().map_err(|_| earlier_commit_failed())?;
        while gate.unapplied.is_some() && !gate.failed {
            gate = self.log.opened.wait(gate).map_err(|_| earlier_commit_failed())?;
        }
        if gate.failed {
            return Err(earlier_commit_failed());
        }
        // Begun under the gate: the writer cannot close it between the check and the read.
        self.db.begin_read().map_err(backend)
    }

    /// Makes `batch` durable in one transaction and visible to reads.
    fn commit_logged(&self, batch: &[DomainWrites]) -> Result<(), StoreError> {
        match self.log_commit(batch)? {
            Logged::Applied => Ok(()),
            Logged::Unapplied => self.apply_logged(batch),
        }
    }

    /// Makes `batch` durable as one commit, after refusing it whole if it would put an
    /// operation where a different one is stored ([`StoreError::VersionTaken`]): once logged,
    /// a commit must apply. Usually it is appended to the log and left for
    /// [`RedbStore::apply_logged`], reads waiting until then; when the log is full, it is
    /// committed durably in redb (a checkpoint) and the log started again. Only the writer's
    /// thread calls this, and it applies each commit left unapplied before the next.
    fn log_commit(&self, batch: &[DomainWrites]) -> Result<Logged, StoreError> {
        let mut wal = self.log.wal.lock().map_err(|_| earlier_commit_failed())?;
        {
            let gate = self.log.gate.lock().map_err(|_| earlier_commit_failed())?;
            if gate.failed {
                return Err(earlier_commit_failed());
            }
            // The writer applies each commit before it logs the next: only a caller out of
            // order gets this.
            if gate.unapplied.is_some() {
                return Err(StoreError::Backend("an earlier commit was not applied".into()));
            }
        }
        check_versions(&self.db, batch)?;
        let payload = encode_logged(batch)?;
        let seq = wal.next_seq();
        if !wal.has_room(payload.len()) {
            write_group(&self.db, batch, Applied::Durable(seq))?;
            wal.restart(seq + 1);
            return Ok(Logged::Applied);
        }
        // Closed before the append: if the log cannot take the commit, its record may be
        // on disk or not, and the error stops the writer with the gate shut.
        self.set_gate(|gate| gate.unapplied = Some(seq));
        if let Err(e) = wal.append(&payload) {
            self.set_gate(|gate| gate.failed = true);
            return Err(StoreError::Backend(format!("writing the store's log: {e}")));
        }
        Ok(Logged::Unapplied)
    }

    /// Applies to redb, without durability (the log has it), the commit
    /// [`RedbStore::log_commit`] logged and left unapplied, and opens the gate to reads. A
    /// failure leaves redb without a commit that may have been acknowledged: reads fail from
    /// then on, and the error stops the writer (a restart applies the log).
    fn apply_logged(&self, batch: &[DomainWrites]) -> Result<(), StoreError> {
        let unapplied = self.log.gate.lock().ok().and_then(|gate| gate.unapplied);
        let Some(seq) = unapplied else {
            return Err(StoreError::Backend("no logged commit is left to apply".into()));
        };
        let applied = self.db.catching(|| write_group(&self.db, batch, Applied::Logged(seq)));
        match &applied {
            Ok(()) => self.set_gate(|gate| gate.unapplied = None),
            Err(_) => self.set_gate(|gate| gate.failed = true),
        }
        applied.map_err(|e| StoreError::Backend(format!("applying a logged commit: {e}")))
    }

    /// Changes the gate and wakes the reads waiting on it.
    fn set_gate(&self, change: impl FnOnce(&mut Gate)) {
        let mut gate = self.log.gate.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        change(&mut gate);
        self.log.opened.notify_all();
    }

    pub(crate) fn load(&self, key: &ModelKey) -> Result<Loaded, StoreError> {
        let txn = self.begin_read()?;
        let k = key.as_tuple();
        let (domain, model) = (&*key.domain, Some(&key.model));
        let models = txn.open_table(MODELS).map_err(backend)?;
        let Some(record) = models.get(k).map_err(backend)? else {
            let deleted =
                txn.open_table(DELETED).map_err(backend)?.get(k).map_err(backend)?.is_some();
            return Ok(Loaded::Absent { deleted });
        };
        let record: ModelRecord = unseal(MODELS.name(), &k, record.value())
            .map_err(|damage| corrupt(domain, model, "its record".into(), damage))?;
        let collection = read_collection(&txn, domain, &record.collection)
            .map_err(|e| failing_its_model(e, domain, &key.model))?;
        let snapshots = txn.open_table(SNAPSHOTS).map_err(backend)?;
        let Some(snapshot) = snapshots.get(k).map_err(backend)? else {
            return Err(missing_snapshot(domain, &key.model));
        };
        let snapshot: ModelSnapshot = unseal(SNAPSHOTS.name(), &k, snapshot.value())
            .map_err(|damage| corrupt(domain, model, ITS_SNAPSHOT.into(), damage))?;
        let operations =
            read_operations_with_users(&txn, key, snapshot.version, u64::MAX, usize::MAX)?;
        let mut authors = BTreeMap::new();
        let operations = operations
            .into_iter()
            .map(|stored| {
                if let Some(user) = stored.user {
                    authors.insert(stored.operation.author.clone(), user);
                }
                stored.operation
            })
            .collect();
        let table = txn.open_table(LAST_DECISIONS).map_err(backend)?;
        let mut last_decisions = BTreeMap::new();
        for entry in table.range((k.0, k.1, 0)..=(k.0, k.1, u64::MAX)).map_err(backend)? {
            let (stored_key, value) = entry.map_err(backend)?;
            let replica = stored_key.value().2;
            let (seq, decision): (u64, StoredDecision) =
                unseal(LAST_DECISIONS.name(), &stored_key.value(), value.value()).map_err(
                    |damage| {
                        corrupt(domain, model, format!("replica {replica}'s last decision"), damage)
                    },
                )?;
            last_decisions.insert(ReplicaId(replica), (seq, decision.into()));
        }
        Ok(Loaded::Model(Box::new(StoredModel {
            record,
            collection,
            snapshot,
            operations,
            last_decisions,
            authors,
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
        let txn = self.begin_read()?;
        read_operations(&txn, key, after, through, limit)
    }

    /// The committed operations in `(after, through]`, at most `limit` of them, each with
    /// its user where stored.
    pub(crate) fn operations_with_users(
        &self,
        key: &ModelKey,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<HistoryOperation>, StoreError> {
        let txn = self.begin_read()?;
        read_operations_with_users(&txn, key, after, through, limit)
    }

    pub(crate) fn collection(
        &self,
        domain: &str,
        collection: &CollectionId,
    ) -> Result<Option<CollectionConfig>, StoreError> {
        let txn = self.begin_read()?;
        read_collection(&txn, domain, collection)
    }

    /// The user `replica` belongs to in `domain`: whoever first used it (`Write::BindReplica`).
    pub(crate) fn replica_owner(
        &self,
        domain: &str,
        replica: ReplicaId,
    ) -> Result<Option<UserId>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(REPLICA_OWNERS).map_err(backend)?;
        let key = (domain, replica.0);
        match table.get(key).map_err(backend)? {
            Some(bytes) => {
                unseal(REPLICA_OWNERS.name(), &key, bytes.value()).map(Some).map_err(|damage| {
                    corrupt(domain, None, format!("replica {}'s owner", replica.0), damage)
                })
            }
            None => Ok(None),
        }
    }

    /// See [`ServerStore::model_keys`].
    pub(crate) fn model_keys(
        &self,
        after: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(MODELS).map_err(backend)?;
        let start = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut keys = Vec::new();
        for entry in
            table.range::<ModelKeyT>((start, std::ops::Bound::Unbounded)).map_err(backend)?
        {
            if keys.len() >= limit {
                break;
            }
            let (key, _) = entry.map_err(backend)?;
            let (domain, model) = key.value();
            keys.push((domain.to_owned(), model.to_owned()));
        }
        Ok(keys)
    }

    /// See [`ServerStore::checkpoint_at_or_before`].
    pub(crate) fn checkpoint_at_or_before(
        &self,
        key: &ModelKey,
        version: u64,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        history::checkpoint_at_or_before(&self.begin_read()?, key, version)
    }

    /// A user seen in `domain` (read back only by the format tests and the fuzz targets
    /// so far).
    pub(crate) fn user(
        &self,
        domain: &str,
        user: &UserId,
    ) -> Result<Option<concord_protocol::User>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(USERS).map_err(backend)?;
        let key = (domain, user.0.as_str());
        match table.get(key).map_err(backend)? {
            Some(bytes) => unseal(USERS.name(), &key, bytes.value())
                .map(Some)
                .map_err(|damage| corrupt(domain, None, format!("user {}", user.0), damage)),
            None => Ok(None),
        }
    }

    /// The `max_users` identities of `domain` learned last, oldest first.
    pub(crate) fn identities(
        &self,
        domain: &str,
        max_users: usize,
    ) -> Result<Vec<Identity>, StoreError> {
        let txn = self.begin_read()?;
        let table = txn.open_table(IDENTITIES).map_err(backend)?;
        // The newest `max_users` by (seen, user), never more of them in memory.
        let mut newest: BTreeMap<(i64, UserId), Identity> = BTreeMap::new();
        let range = table.range((domain, "")..).map_err(backend)?;
        for entry in range {
            let (key, bytes) = entry.map_err(backend)?;
            let (at, user) = key.value();
            if at != domain {
                break;
            }
            let stored: StoredIdentity = unseal(IDENTITIES.name(), &(at, user), bytes.value())
                .map_err(|damage| corrupt(domain, None, format!("identity {user}"), damage))?;
            newest.insert((stored.seen, stored.identity.user.clone()), stored.identity);
            if newest.len() > max_users {
                newest.pop_first();
            }
        }
        Ok(newest.into_values().collect())
    }

    /// Starts the writer thread over this store (see [`start_writer`]).
    #[cfg(test)]
    pub(crate) fn start_writer(
        &self,
        on_failure: CancellationToken,
    ) -> Result<(Writer, std::thread::JoinHandle<()>), StoreError> {
        let metrics = Arc::new(Metrics::new());
        start_writer(Arc::new(self.clone()), on_failure, std::time::Duration::ZERO, metrics)
    }
}

/// Runs a blocking read of the redb file on the blocking pool, reporting a panic inside
/// redb as damage ([`Db::catching`]).
async fn blocking<T: Send + 'static>(
    store: &RedbStore,
    read: impl FnOnce(&RedbStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.db.catching(|| read(&store)))
        .await
        .map_err(|e| StoreError::Backend(format!("the store task failed: {e}")))?
}

/// The redb file is read on the blocking pool (redb's calls block) and written on the
/// writer's thread.
#[async_trait::async_trait]
impl ServerStore for RedbStore {
    async fn load(&self, key: &ModelKey) -> Result<Loaded, StoreError> {
        let key = key.clone();
        blocking(self, move |store| store.load(&key)).await
    }

    async fn operations(
        &self,
        key: &ModelKey,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<HistoryOperation>, StoreError> {
        let key = key.clone();
        blocking(self, move |store| store.operations_with_users(&key, after, through, limit)).await
    }

    async fn collection(
        &self,
        domain: &str,
        collection: &CollectionId,
    ) -> Result<Option<CollectionConfig>, StoreError> {
        let (domain, collection) = (domain.to_owned(), collection.clone());
        blocking(self, move |store| store.collection(&domain, &collection)).await
    }

    async fn replica_owner(
        &self,
        domain: &str,
        replica: ReplicaId,
    ) -> Result<Option<UserId>, StoreError> {
        let domain = domain.to_owned();
        blocking(self, move |store| store.replica_owner(&domain, replica)).await
    }

    async fn user(
        &self,
        domain: &str,
        user: &UserId,
    ) -> Result<Option<concord_protocol::User>, StoreError> {
        let (domain, user) = (domain.to_owned(), user.clone());
        blocking(self, move |store| store.user(&domain, &user)).await
    }

    async fn identities(
        &self,
        domain: &str,
        max_users: usize,
    ) -> Result<Vec<Identity>, StoreError> {
        let domain = domain.to_owned();
        blocking(self, move |store| store.identities(&domain, max_users)).await
    }

    async fn model_keys(
        &self,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        blocking(self, move |store| {
            store.model_keys(after.as_ref().map(|(d, m)| (d.as_str(), m.as_str())), limit)
        })
        .await
    }

    async fn checkpoint_at_or_before(
        &self,
        key: &ModelKey,
        version: u64,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        let key = key.clone();
        blocking(self, move |store| store.checkpoint_at_or_before(&key, version)).await
    }

    async fn history(&self, key: &ModelKey, read: &HistoryRead) -> ServerMessage {
        let (key, owned_read) = (key.clone(), read.clone());
        let answer = blocking(self, move |store| Ok(store.history(&key, &owned_read))).await;
        answer.unwrap_or_else(|e| failed_history(read, e))
    }

    async fn query(
        &self,
        domain: &str,
        read: &QueryRead,
        config: &Arc<HostConfig>,
        limits: &QueryLimits,
    ) -> ServerMessage {
        let (domain, owned_read) = (domain.to_owned(), read.clone());
        let (owned_config, owned_limits) = (config.clone(), *limits);
        let answer = blocking(self, move |store| {
            Ok(store.query(&domain, &owned_read, &owned_config, &owned_limits))
        })
        .await;
        answer.unwrap_or_else(|e| failed_query(read, config, limits, e))
    }

    /// In place, on the writer's thread: a hop to the blocking pool and back would add two
    /// thread switches to every acknowledgement, as long as the flush itself at one client.
    async fn commit(&self, batch: &[DomainWrites]) -> Result<(), StoreError> {
        self.db.catching(|| self.commit_logged(batch))
    }

    async fn log_commit(&self, batch: &[DomainWrites]) -> Result<Logged, StoreError> {
        self.db.catching(|| RedbStore::log_commit(self, batch))
    }

    fn apply_logged(&self, batch: &[DomainWrites]) -> Result<(), StoreError> {
        RedbStore::apply_logged(self, batch)
    }

    async fn back_up(&self, dir: &Path) -> Result<Backup, StoreError> {
        let dir = dir.to_owned();
        blocking(self, move |store| store.back_up(&dir)).await
    }
}

// How both backends name the records that `concord store` tells apart, in the `record` of
// a model's `StoreError::CorruptRecord`: a load names them through these, and
// `names_its_collection` and `names_its_snapshot` read them back.
const ITS_SNAPSHOT: &str = "its snapshot";
const ITS_SNAPSHOT_IS_MISSING: &str = "its snapshot is missing";
const COLLECTION: &str = "collection";

/// The name of `collection`'s record, damaged.
fn collection_record(collection: &CollectionId) -> String {
    format!("{COLLECTION} {collection}")
}

/// A load's error when the collection of `model` fails: the model cannot be served without
/// its collection's settings, so a damaged collection record is named as the model's.
fn failing_its_model(error: StoreError, domain: &str, model: &ModelId) -> StoreError {
    match error {
        StoreError::CorruptRecord { record, .. } => StoreError::CorruptRecord {
            domain: domain.to_owned(),
            model: Some(model.clone()),
            record: format!("its {record}"),
        },
        other => other,
    }
}

/// A load's error for a model without a snapshot.
fn missing_snapshot(domain: &str, model: &ModelId) -> StoreError {
    let record = ITS_SNAPSHOT_IS_MISSING.to_owned();
    StoreError::CorruptRecord { domain: domain.to_owned(), model: Some(model.clone()), record }
}

/// Whether the `record` a model's [`StoreError::CorruptRecord`] names is its collection's
/// (damaged for every model of the collection).
pub(crate) fn names_its_collection(record: &str) -> bool {
    record.strip_prefix("its ").is_some_and(|rest| rest.starts_with(&format!("{COLLECTION} ")))
}

/// Whether the `record` a model's [`StoreError::CorruptRecord`] names is its snapshot (damaged
/// or missing).
pub(crate) fn names_its_snapshot(record: &str) -> bool {
    record.starts_with(ITS_SNAPSHOT)
}

/// Creates `dir` and its missing parents, readable by the owner only (Unix).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates a new store at `path`: written whole under a temporary name (0600 on Unix), then
/// linked into place only if nothing is there yet. So a file at `path` is always a complete
/// store, and a crash while creating one leaves nothing that a restart would refuse.
fn create_file(dir: &Path, path: &Path) -> Result<(), StoreError> {
    static ATTEMPT: AtomicU64 = AtomicU64::new(0);
    let attempt = ATTEMPT.fetch_add(1, Ordering::Relaxed);
    let temporary = dir.join(format!("{FILE_NAME}.new-{}-{attempt}", std::process::id()));
    let created = initialize(&temporary);
    let linked = created.and_then(|()| match std::fs::hard_link(&temporary, path) {
        // Another process created the store meanwhile: open theirs.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        other => other.map_err(StoreError::Io),
    });
    let _ = std::fs::remove_file(&temporary);
    linked?;
    // Make the new name durable too.
    #[cfg(unix)]
    std::fs::File::open(dir).and_then(|d| d.sync_all())?;
    Ok(())
}

/// A new, empty redb database in a new file at `path`, readable by the owner only (Unix).
fn create_private_database(path: &Path) -> Result<Database, StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path)?;
    #[cfg(unix)]
    {
        // The mode above is subject to the umask; make sure of it either way.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    let backend_file = redb::backends::FileBackend::new(file).map_err(backend)?;
    Database::builder().create_with_backend(backend_file).map_err(backend)
}

/// Writes an empty store of the current format into a new file at `path`.
fn initialize(path: &Path) -> Result<(), StoreError> {
    let db = create_private_database(path)?;
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::Immediate).map_err(backend)?;
    let mut meta = txn.open_table(META).map_err(backend)?;
    meta.insert("format", FORMAT_VERSION).map_err(backend)?;
    meta.insert("wal_id", new_log_id()).map_err(backend)?;
    drop(meta);
    create_tables(&txn)?;
    txn.commit().map_err(backend)?;
    db.close().map_err(backend)
}

/// Creates every table of the current format, so that readers never meet a missing one.
fn create_tables(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    txn.open_table(MODELS).map_err(backend)?;
    txn.open_table(SNAPSHOTS).map_err(backend)?;
    txn.open_table(OPERATIONS).map_err(backend)?;
    txn.open_table(LAST_DECISIONS).map_err(backend)?;
    txn.open_table(DELETED).map_err(backend)?;
    txn.open_table(COLLECTIONS).map_err(backend)?;
    txn.open_table(USERS).map_err(backend)?;
    txn.open_table(REPLICA_OWNERS).map_err(backend)?;
    txn.open_table(CHECKPOINTS).map_err(backend)?;
    txn.open_table(OPERATION_USERS).map_err(backend)?;
    txn.open_table(COLLECTION_MODELS).map_err(backend)?;
    txn.open_table(INDEX_ENTRIES).map_err(backend)?;
    txn.open_table(MODEL_INDEX_KEYS).map_err(backend)?;
    txn.open_table(INDEXES).map_err(backend)?;
    txn.open_table(IDENTITIES).map_err(backend)?;
    Ok(())
}

/// The most redb keeps of the file in its own cache (its default is 1 GiB). Every loaded
/// model lives in its host, so the store is read when a model loads, for old history and for
/// catch-ups, and written once per group commit: the operating system's page cache serves
/// those well, and a cache here would only hold, for the life of the process, up to its size
/// of pages of models long unloaded (7 MiB after 10,000 models were synced,
/// `docs/benchmarks.md`, P6). 1 MiB keeps the upper levels of the tables' trees.
const CACHE_BYTES: usize = 1024 * 1024;

/// Opens the existing store file at `path`; an empty or foreign file is refused.
fn open_file(path: &Path) -> Result<Database, StoreError> {
    let not_a_store = |reason: String| StoreError::NotAStore { path: path.to_owned(), reason };
    if std::fs::metadata(path)?.len() == 0 {
        // redb would initialize a new database in it: a truncated store would come back empty.
        return Err(not_a_store("the file is empty".into()));
    }
    // redb checks every page's checksum and rebuilds its allocator's state at open (about
    // 1.4 s per GiB, `docs/server.md`), so a file damaged since it was written is refused
    // whole, before anything writes. A plain open trusts the file, and the first commit can
    // then meet a damaged free list and abort the process where no panic can be caught
    // (found by the `server_store_file` fuzz target). The records' own checksums still
    // refuse only their models for what changes once the file is open, and on PostgreSQL.
    let opened = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(true)
        .open(path);
    opened.map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => {
            StoreError::InUse(format!("{} is open in another process", path.display()))
        }
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(why)) => {
            StoreError::Corrupt(format!(
                "{} failed its integrity check ({why}); restore it from a backup",
                path.display()
            ))
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == ErrorKind::InvalidData =>
        {
            not_a_store(io.to_string())
        }
        other => backend(other),
    })
}

/// The format `db` records; a database without one is not a Concord store.
fn recorded_format(db: &Database, path: &Path) -> Result<u64, StoreError> {
    let not_a_store =
        |reason: &str| StoreError::NotAStore { path: path.to_owned(), reason: reason.to_owned() };
    let txn = db.begin_read().map_err(backend)?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(TableError::TableDoesNotExist(_) | TableError::TableTypeMismatch { .. }) => {
            return Err(not_a_store("a redb database without a Concord format"));
        }
        Err(other) => return Err(backend(other)),
    };
    match meta.get("format").map_err(backend)? {
        Some(format) if format.value() >= 1 => Ok(format.value()),
        _ => Err(not_a_store("a redb database without a Concord format")),
    }
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            tracing::warn!(path = %path.display(), "the server store is readable by other users; chmod 600 it");
        }
    }
}

fn read_collection(
    txn: &redb::ReadTransaction,
    domain: &str,
    collection: &CollectionId,
) -> Result<Option<CollectionConfig>, StoreError> {
    let table = txn.open_table(COLLECTIONS).map_err(backend)?;
    let key = (domain, collection.as_str());
    match table.get(key).map_err(backend)? {
        Some(bytes) => unseal(COLLECTIONS.name(), &key, bytes.value())
            .map(Some)
            .map_err(|damage| corrupt(domain, None, collection_record(collection), damage)),
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
        let (stored_key, bytes) = entry.map_err(backend)?;
        let version = stored_key.value().2;
        let operation =
            unseal(OPERATIONS.name(), &stored_key.value(), bytes.value()).map_err(|damage| {
                corrupt(domain, Some(&key.model), format!("operation {version}"), damage)
            })?;
        out.push(operation);
    }
    Ok(out)
}

/// [`read_operations`], each with its user where stored.
fn read_operations_with_users(
    txn: &redb::ReadTransaction,
    key: &ModelKey,
    after: u64,
    through: u64,
    limit: usize,
) -> Result<Vec<HistoryOperation>, StoreError> {
    let operations = read_operations(txn, key, after, through, limit)?;
    let (domain, model) = key.as_tuple();
    let users = txn.open_table(OPERATION_USERS).map_err(backend)?;
    let mut out = Vec::with_capacity(operations.len());
    for operation in operations {
        let k = (domain, model, operation.version);
        let user = match users.get(k).map_err(backend)? {
            Some(bytes) => {
                Some(unseal::<_, UserId>(OPERATION_USERS.name(), &k, bytes.value()).map_err(
                    |damage| {
                        let record = format!("operation {}'s user", operation.version);
                        corrupt(domain, Some(&key.model), record, damage)
                    },
                )?)
            }
            None => None,
        };
        out.push(HistoryOperation { operation, user });
    }
    Ok(out)
}

/// Jobs queued for the writer before senders wait.
const WRITER_QUEUE: usize = 8_192;
/// Jobs folded into one transaction at most.
const MAX_GROUP: usize = 4_096;
/// How long the idle writer polls for the next job before it sleeps. A client that waits for
/// each acknowledgement sends its next operation within about a round trip, and a writer
/// that sleeps must be woken for it: on a virtual machine whose idle vCPUs halt, each such
/// wake-up costs tens of microseconds. Polling this long took one client from 2,540 to 3,356
/// acknowledged operations per second, and changed 10 and 50 clients by about 1 %
/// (`docs/benchmarks.md`, P2); a server with little to write pays it once per commit. The
/// writer yields its vCPU between polls, so that a thread with work to do (the async worker
/// that queues the next job, or anything else on the machine) runs meanwhile: on two vCPUs
/// that took 50 clients 13 % further and left one and ten where they were.
const WRITER_POLL: Duration = Duration::from_micros(300);

/// Writes to one domain's models, then what may be said once they are durable.
#[derive(Debug, Default)]
pub(crate) struct Job {
    pub(crate) domain: Arc<str>,
    pub(crate) writes: Vec<Write>,
    pub(crate) deliveries: Vec<Delivery>,
    /// Told once the writes are durable (or failed).
    pub(crate) done: Option<oneshot::Sender<Result<(), StoreError>>>,
    /// The queuing model's: cancelled by the writer when a job of that model could not be
    /// written. The model's later jobs build on what the store lacks, so they are failed
    /// unwritten, and the model reloads from the store.
    pub(crate) lost: CancellationToken,
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

/// Starts the writer: a thread of its own that takes every job queued meanwhile into one
/// [`ServerStore::commit`] (group commit across models) and only then hands over the jobs'
/// deliveries. A commit that fails with [`StoreError::Unavailable`] is retried, with the
/// same jobs, for up to `retry_for`. If it still fails so, or a version is taken, the
/// group's jobs are failed: the sessions they would have answered are closed, saying why
/// (clients resend what was not acknowledged), and their models reload from the store. Any
/// other failure stops the writer for good (cancelling `on_failure`): the store itself is
/// in doubt. The writer also stops when every [`Writer`] is dropped. Must be called within
/// a tokio runtime, which the thread drives the store's futures on.
pub(crate) fn start_writer(
    store: Store,
    on_failure: CancellationToken,
    retry_for: Duration,
    metrics: Arc<Metrics>,
) -> Result<(Writer, std::thread::JoinHandle<()>), StoreError> {
    let (sender, receiver) = mpsc::channel(WRITER_QUEUE);
    let runtime = tokio::runtime::Handle::current();
    let thread =
        std::thread::Builder::new().name("concord-store-writer".into()).spawn(move || {
            runtime.block_on(write_loop(&*store, receiver, on_failure, retry_for, &metrics))
        })?;
    Ok((Writer { sender }, thread))
}

/// The first pause before retrying a commit, doubled after each failure up to
/// [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(50);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// The writer's loop, until every sender is dropped (crate-visible for tests that queue a
/// group of jobs before it starts).
pub(crate) async fn write_loop(
    store: &dyn ServerStore,
    mut receiver: mpsc::Receiver<Job>,
    on_failure: CancellationToken,
    retry_for: Duration,
    metrics: &Metrics,
) {
    let mut group = Vec::new();
    while let Some(first) = next_job(&mut receiver).await {
        group.push(first);
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        // What a model queued after one of its jobs was lost is not written.
        for job in group.extract_if(.., |job| job.lost.is_cancelled()) {
            fail_job(job, "an earlier write of the model failed");
        }
        let result = loop {
            let (batch, owners) = take_writes(&mut group);
            if batch.is_empty() {
                break Ok((Logged::Applied, batch));
            }
            let started = std::time::Instant::now();
            let result = commit_retrying(store, &batch, retry_for).await;
            metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
            metrics.commit_group_jobs.observe(group.len() as f64);
            let Err(StoreError::LeaseLost { domain, model }) = result else {
                break result.map(|logged| (logged, batch));
            };
            // One model's lease is lost: its jobs fail, and the group is committed again
            // without them, so the other models' work is not lost with it.
            give_back(&mut group, batch, owners);
            let mut found = false;
            for job in &group {
                let writes_model = job.writes.iter().any(|w| written_model(w) == Some(&model));
                if *job.domain == *domain && writes_model {
                    job.lost.cancel();
                    found = true;
                }
            }
            if !found {
                // Not one of this group's models (it never is): the whole group fails.
                break Err(StoreError::LeaseLost { domain, model });
            }
            let reason = format!(
                "this server node no longer serves the model {model}; reconnect and resend what was not acknowledged"
            );
            tracing::warn!(%model, "a commit found the model's lease lost; its jobs fail, the others are committed");
            for job in group.extract_if(.., |job| job.lost.is_cancelled()) {
                fail_job(job, &reason);
            }
        };
        let mut waiting = Vec::new();
        let result = match result {
            Ok((logged, batch)) => {
                // Durable: what the jobs reveal is said now, while the store applies them.
                for job in group.drain(..) {
                    for delivery in job.deliveries {
                        delivery.deliver();
                    }
                    waiting.extend(job.done);
                }
                match logged {
                    Logged::Applied => Ok(()),
                    Logged::Unapplied => store.apply_logged(&batch),
                }
            }
            Err(error) if error.spares_the_server() => {
                tracing::error!(%error, jobs = group.len(), "a store write failed; its sessions are closed and its models reload");
                let reason = format!("a write failed: {error}; resend what was not acknowledged");
                for job in group.drain(..) {
                    fail_job(job, &reason);
                }
                Ok(())
            }
            Err(error) => {
                waiting.extend(group.drain(..).filter_map(|job| job.done));
                Err(error)
            }
        };
        match result {
            Ok(()) => {
                for done in waiting {
                    let _ = done.send(Ok(()));
                }
            }
            Err(error) => {
                tracing::error!(%error, "a store write failed; the server stops taking writes");
                on_failure.cancel();
                let error = error.to_string();
                for done in waiting {
                    let _ = done.send(Err(StoreError::Backend(error.clone())));
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

/// The next job: polled for [`WRITER_POLL`], yielding the vCPU between polls, then waited
/// for; `None` once every sender is gone.
async fn next_job(receiver: &mut mpsc::Receiver<Job>) -> Option<Job> {
    let polling_until = std::time::Instant::now() + WRITER_POLL;
    loop {
        match receiver.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::error::TryRecvError::Empty) if std::time::Instant::now() < polling_until => {
                std::thread::yield_now();
            }
            Err(_) => return receiver.recv().await,
        }
    }
}

/// The writes of `group`'s jobs, taken out of them, as one batch; and which job each part
/// of the batch came from.
fn take_writes(group: &mut [Job]) -> (Vec<DomainWrites>, Vec<usize>) {
    let mut batch = Vec::new();
    let mut owners = Vec::new();
    for (index, job) in group.iter_mut().enumerate() {
        if !job.writes.is_empty() {
            let writes = std::mem::take(&mut job.writes);
            batch.push(DomainWrites { domain: job.domain.clone(), writes });
            owners.push(index);
        }
    }
    (batch, owners)
}

/// Puts the writes [`take_writes`] took back into their jobs.
fn give_back(group: &mut [Job], batch: Vec<DomainWrites>, owners: Vec<usize>) {
    for (part, index) in batch.into_iter().zip(owners) {
        group[index].writes = part.writes;
    }
}

/// The model a write belongs to, if it belongs to one.
pub(crate) fn written_model(write: &Write) -> Option<&ModelId> {
    match write {
        Write::CreateModel { model, .. }
        | Write::Snapshot { model, .. }
        | Write::SetGrants { model, .. }
        | Write::IndexModel { model, .. }
        | Write::DeleteModel { model, .. } => Some(model),
        Write::Commit(record) => Some(&record.model),
        Write::Refusal(record) => Some(&record.model),
        _ => None,
    }
}

/// Commits `batch`, retrying while the store is unavailable, for up to `retry_for`.
async fn commit_retrying(
    store: &dyn ServerStore,
    batch: &[DomainWrites],
    retry_for: Duration,
) -> Result<Logged, StoreError> {
    let deadline = tokio::time::Instant::now() + retry_for;
    let mut pause = FIRST_RETRY_PAUSE;
    let mut attempts = 1;
    loop {
        // A commit whose outcome is unknown (the connection dropped during it) is retried
        // too: the backend recognizes its operations if they did get in.
        match store.log_commit(batch).await {
            Err(StoreError::Unavailable(why))
                if tokio::time::Instant::now() + pause <= deadline =>
            {
                tracing::warn!(attempts, error = %why, "the store is unavailable; retrying the commit");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
                attempts += 1;
            }
            result => {
                if attempts > 1 && result.is_ok() {
                    tracing::info!(attempts, "the store is back; the commit went through");
                }
                return result;
            }
        }
    }
}

/// Fails `job` unwritten: nothing of it is delivered, the sessions it would have answered
/// are closed with `reason`, and its model reloads.
fn fail_job(job: Job, reason: &str) {
    job.lost.cancel();
    for delivery in job.deliveries {
        delivery.outbox.lose(reason);
    }
    if let Some(done) = job.done {
        let _ = done.send(Err(StoreError::Unavailable(reason.to_owned())));
    }
}

/// How a [`write_group`] transaction is made durable, and the seq it is recorded as.
#[derive(Debug, Clone, Copy)]
enum Applied {
    /// By redb itself, before `write_group` returns.
    Durable(u64),
    /// Not yet: by the caller, appending the log record of this seq.
    Logged(u64),
}

/// A new store's log id: different for every store created, so that no log is read as
/// another store's (`wal`). Not a secret.
fn new_log_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

/// A commit's writes as a log record's payload.
fn encode_logged(batch: &[DomainWrites]) -> Result<Vec<u8>, StoreError> {
    let logged: Vec<(&str, &[Write])> =
        batch.iter().map(|part| (&*part.domain, part.writes.as_slice())).collect();
    postcard::to_allocvec(&logged)
        .map_err(|e| StoreError::Backend(format!("encoding a commit for the log: {e}")))
}

/// The writes of the log record `seq`'s payload.
fn decode_logged(seq: u64, payload: &[u8]) -> Result<Vec<DomainWrites>, StoreError> {
    let logged: Vec<(String, Vec<Write>)> = postcard::from_bytes(payload).map_err(|e| {
        StoreError::Corrupt(format!("commit {seq} in the store's log does not decode: {e}"))
    })?;
    Ok(logged
        .into_iter()
        .map(|(domain, writes)| DomainWrites { domain: Arc::from(domain), writes })
        .collect())
}

/// The store's log id and the seq of the last commit its durable state applied.
fn log_position(db: &Database) -> Result<(u64, u64), StoreError> {
    let txn = db.begin_read().map_err(backend)?;
    let meta = txn.open_table(META).map_err(backend)?;
    let read = |key| meta.get(key).map(|v| v.map(|v| v.value())).map_err(backend);
    let id = read("wal_id")?.ok_or_else(|| StoreError::Corrupt("no log id".into()))?;
    Ok((id, read("wal_applied")?.unwrap_or(0)))
}

/// Reads the log beside `db`, applies the records the store's durable state lacks, and
/// makes them durable in redb, so that the log can start again from its start.
fn recover(db: &Database, dir: &Path) -> Result<wal::Wal, StoreError> {
    let (id, applied) = log_position(db)?;
    let (mut wal, records) = wal::Wal::open(&dir.join(wal::FILE_NAME), id)?;
    let missing: Vec<_> = records.into_iter().filter(|(seq, _)| *seq > applied).collect();
    if let Some((first, _)) = missing.first()
        && *first != applied + 1
    {
        return Err(StoreError::Corrupt(format!(
            "the store's log goes on from commit {first}, but the store has only commit {applied}: \
             the store file is older than its log"
        )));
    }
    let (count, last) = (missing.len(), missing.last().map_or(applied, |(seq, _)| *seq));
    for (position, (seq, payload)) in missing.into_iter().enumerate() {
        let batch = decode_logged(seq, &payload)?;
        let applied =
            if position + 1 == count { Applied::Durable(seq) } else { Applied::Logged(seq) };
        write_group(db, &batch, applied).map_err(|e| match e {
            StoreError::VersionTaken { .. } => {
                StoreError::Corrupt(format!("commit {seq} in the store's log does not apply: {e}"))
            }
            other => other,
        })?;
    }
    if count > 0 {
        tracing::info!(commits = count, "applied the commits the store's log held beyond it");
    }
    wal.restart(last.max(applied) + 1);
    Ok(wal)
}

/// Refuses `batch` with [`StoreError::VersionTaken`] if one of its operations would go where
/// the store, or the batch before it, holds a different one; reads what [`write_group`]
/// would find, without writing, so that a commit is refused before it is logged.
fn check_versions(db: &Database, batch: &[DomainWrites]) -> Result<(), StoreError> {
    let mut stored = None;
    // This batch's operations so far, and its deleted models, which hold none from then on.
    let mut written: BTreeMap<(&str, &str, u64), Vec<u8>> = BTreeMap::new();
    let mut deleted: Vec<(&str, &str)> = Vec::new();
    for part in batch {
        let domain = &*part.domain;
        for write in &part.writes {
            match write {
                Write::DeleteModel { model, .. } => {
                    deleted.push((domain, model.as_str()));
                    written.retain(|k, _| (k.0, k.1) != (domain, model.as_str()));
                }
                Write::Commit(record) => {
                    let k = (domain, record.model.as_str(), record.operation.version);
                    let bytes = seal(OPERATIONS.name(), &k, &record.operation);
                    let taken = match written.get(&k) {
                        Some(earlier) => *earlier != bytes,
                        None if deleted.contains(&(k.0, k.1)) => false,
                        None => {
                            let stored = match &mut stored {
                                Some(table) => table,
                                None => stored.insert(
                                    db.begin_read()
                                        .map_err(backend)?
                                        .open_table(OPERATIONS)
                                        .map_err(backend)?,
                                ),
                            };
                            stored.get(k).map_err(backend)?.is_some_and(|s| s.value() != bytes)
                        }
                    };
                    if taken {
                        return Err(StoreError::VersionTaken {
                            domain: domain.to_owned(),
                            model: record.model.clone(),
                            version: k.2,
                        });
                    }
                    written.insert(k, bytes);
                }
                _ => {}
            }
        }
    }
    Ok(())
}

fn write_group(db: &Database, group: &[DomainWrites], applied: Applied) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    let (durability, seq) = match applied {
        Applied::Durable(seq) => (Durability::Immediate, seq),
        Applied::Logged(seq) => (Durability::None, seq),
    };
    txn.set_durability(durability).map_err(backend)?;
    txn.table(META)?.insert("wal_applied", seq).map_err(backend)?;
    {
        // Each table is opened at its first use: opening all of them costs more than one
        // operation's writes.
        let mut models = Lazy::new(&txn, MODELS);
        let mut snapshots = Lazy::new(&txn, SNAPSHOTS);
        let mut operations = Lazy::new(&txn, OPERATIONS);
        let mut last_decisions = Lazy::new(&txn, LAST_DECISIONS);
        let mut deleted = Lazy::new(&txn, DELETED);
        let mut collections = Lazy::new(&txn, COLLECTIONS);
        let mut users = Lazy::new(&txn, USERS);
        let mut replica_owners = Lazy::new(&txn, REPLICA_OWNERS);
        let mut checkpoints = Lazy::new(&txn, CHECKPOINTS);
        let mut operation_users = Lazy::new(&txn, OPERATION_USERS);
        let mut identities = Lazy::new(&txn, IDENTITIES);
        let mut members = Lazy::new(&txn, COLLECTION_MODELS);
        let mut indexes = None;
        for job in group {
            let domain = &*job.domain;
            for write in &job.writes {
                match write {
                    Write::CreateModel { model, record, snapshot } => {
                        let k = (domain, model.as_str());
                        models
                            .table()?
                            .insert(k, seal(MODELS.name(), &k, record).as_slice())
                            .map_err(backend)?;
                        let member = (domain, record.collection.as_str(), model.as_str());
                        members.table()?.insert(member, 0).map_err(backend)?;
                        let sealed = seal(SNAPSHOTS.name(), &k, snapshot);
                        snapshots.table()?.insert(k, sealed.as_slice()).map_err(backend)?;
                        // The model as created: where its history starts.
                        let k = (domain, model.as_str(), snapshot.version);
                        let sealed = seal(CHECKPOINTS.name(), &k, snapshot);
                        checkpoints.table()?.insert(k, sealed.as_slice()).map_err(backend)?;
                    }
                    Write::Commit(record) => {
                        let model = record.model.as_str();
                        let version = record.operation.version;
                        let k = (domain, model, version);
                        let bytes = seal(OPERATIONS.name(), &k, &record.operation);
                        // A version holds one operation for good: writing the same one
                        // again changes nothing, another one is refused (and, the
                        // transaction dropped uncommitted, nothing of the batch is written).
                        let previous =
                            operations.table()?.insert(k, bytes.as_slice()).map_err(backend)?;
                        if previous.is_some_and(|stored| stored.value() != bytes.as_slice()) {
                            return Err(StoreError::VersionTaken {
                                domain: domain.to_owned(),
                                model: record.model.clone(),
                                version,
                            });
                        }
                        let k = (domain, model, record.replica.0);
                        let timestamp = record.operation.timestamp.0;
                        let value = (record.seq, StoredDecision::Committed { version, timestamp });
                        let bytes = seal(LAST_DECISIONS.name(), &k, &value);
                        last_decisions.table()?.insert(k, bytes.as_slice()).map_err(backend)?;
                        // The host binds a replica durably before it commits under it.
                        let owner = replica_owners
                            .table()?
                            .get((domain, record.replica.0))
                            .map_err(backend)?
                            .map(|bytes| bytes.value().to_vec());
                        if let Some(owner) = owner {
                            let k = (domain, model, version);
                            let user: Option<UserId> =
                                unseal(REPLICA_OWNERS.name(), &(domain, record.replica.0), &owner)
                                    .ok();
                            if let Some(user) = user {
                                let bytes = seal(OPERATION_USERS.name(), &k, &user);
                                operation_users
                                    .table()?
                                    .insert(k, bytes.as_slice())
                                    .map_err(backend)?;
                            }
                        }
                    }
                    Write::Refusal(record) => {
                        let k = (domain, record.model.as_str(), record.replica.0);
                        let value = (record.seq, StoredDecision::Refused { code: record.code.0 });
                        let bytes = seal(LAST_DECISIONS.name(), &k, &value);
                        last_decisions.table()?.insert(k, bytes.as_slice()).map_err(backend)?;
                    }
                    Write::Snapshot { model, snapshot } => {
                        let k = (domain, model.as_str());
                        let sealed = seal(SNAPSHOTS.name(), &k, snapshot);
                        snapshots.table()?.insert(k, sealed.as_slice()).map_err(backend)?;
                        // Kept for good: opening any version replays at most the operations
                        // since the checkpoint before it.
                        let k = (domain, model.as_str(), snapshot.version);
                        let sealed = seal(CHECKPOINTS.name(), &k, snapshot);
                        checkpoints.table()?.insert(k, sealed.as_slice()).map_err(backend)?;
                    }
                    Write::SetGrants { model, record } => {
                        let k = (domain, model.as_str());
                        models
                            .table()?
                            .insert(k, seal(MODELS.name(), &k, record).as_slice())
                            .map_err(backend)?;
                    }
                    Write::IndexModel { model, collection, keys } => {
                        let keys: Vec<(String, Vec<u8>)> =
                            keys.iter().map(|(p, k)| (p.to_string(), k.clone())).collect();
                        IndexTables::opened(&mut indexes, &txn)?.set(
                            domain,
                            model.as_str(),
                            collection.as_str(),
                            &keys,
                        )?;
                    }
                    Write::DeleteModel { model, at } => {
                        let model = model.as_str();
                        IndexTables::opened(&mut indexes, &txn)?.remove(domain, model)?;
                        let record = models.table()?.remove((domain, model)).map_err(backend)?;
                        let record = record.map(|bytes| {
                            unseal::<_, ModelRecord>(MODELS.name(), &(domain, model), bytes.value())
                        });
                        match record {
                            None => {}
                            Some(Ok(record)) => {
                                let member = (domain, record.collection.as_str(), model);
                                members.table()?.remove(member).map_err(backend)?;
                            }
                            // A damaged record (`concord store drop-model`) does not say its
                            // collection: the model leaves whichever holds it.
                            Some(Err(_)) => members
                                .table()?
                                .retain_in((domain, "", "").., |(d, _, m), _| {
                                    (d, m) != (domain, model)
                                })
                                .map_err(backend)?,
                        }
                        snapshots.table()?.remove((domain, model)).map_err(backend)?;
                        operations
                            .table()?
                            .retain_in((domain, model, 0)..=(domain, model, u64::MAX), |_, _| false)
                            .map_err(backend)?;
                        let versions = (domain, model, 0)..=(domain, model, u64::MAX);
                        last_decisions
                            .table()?
                            .retain_in(versions.clone(), |_, _| false)
                            .map_err(backend)?;
                        checkpoints
                            .table()?
                            .retain_in(versions.clone(), |_, _| false)
                            .map_err(backend)?;
                        operation_users
                            .table()?
                            .retain_in(versions, |_, _| false)
                            .map_err(backend)?;
                        deleted.table()?.insert((domain, model), at.0).map_err(backend)?;
                    }
                    Write::PutCollection { collection, config } => {
                        let k = (domain, collection.as_str());
                        let config = seal(COLLECTIONS.name(), &k, config);
                        collections.table()?.insert(k, config.as_slice()).map_err(backend)?;
                    }
                    Write::PutUser { user } => {
                        let k = (domain, user.id.0.as_str());
                        users
                            .table()?
                            .insert(k, seal(USERS.name(), &k, user).as_slice())
                            .map_err(backend)?;
                    }
                    Write::PutIdentity { identity, seen } => {
                        let k = (domain, identity.user.0.as_str());
                        let stored = StoredIdentity { identity: identity.clone(), seen: seen.0 };
                        let sealed = seal(IDENTITIES.name(), &k, &stored);
                        identities.table()?.insert(k, sealed.as_slice()).map_err(backend)?;
                    }
                    Write::BindReplica { replica, user } => {
                        // The first owner stays: a replica id never changes hands.
                        let k = (domain, replica.0);
                        if replica_owners.table()?.get(k).map_err(backend)?.is_none() {
                            let owner = seal(REPLICA_OWNERS.name(), &k, user);
                            replica_owners.table()?.insert(k, owner.as_slice()).map_err(backend)?;
                        }
                    }
                }
            }
        }
    }
    txn.commit().map_err(backend)
}

/// A table of a write transaction, opened at its first use.
struct Lazy<'t, K: redb::Key + 'static, V: redb::Value + 'static> {
    txn: &'t redb::WriteTransaction,
    definition: TableDefinition<'static, K, V>,
    table: Option<Unwound<redb::Table<'t, K, V>>>,
}

impl<'t, K: redb::Key + 'static, V: redb::Value + 'static> Lazy<'t, K, V> {
    fn new(txn: &'t redb::WriteTransaction, definition: TableDefinition<'static, K, V>) -> Self {
        Lazy { txn, definition, table: None }
    }

    fn table(&mut self) -> Result<&mut redb::Table<'t, K, V>, StoreError> {
        if self.table.is_none() {
            self.table = Some(self.txn.table(self.definition)?);
        }
        Ok(self.table.as_mut().expect("opened above"))
    }
}

impl From<TableError> for StoreError {
    fn from(error: TableError) -> StoreError {
        backend(error)
    }
}
