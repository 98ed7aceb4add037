//! The server store on PostgreSQL (feature `postgres`): the same data as [`RedbStore`]
//! (`postgres/0001_initial.sql`), reached through a pool of `tokio-postgres` connections.
//!
//! - Durability: every connection runs with `synchronous_commit = on`, and the writer
//!   acknowledges nothing before [`ServerStore::commit`] returned, so an acknowledged
//!   operation is in PostgreSQL's WAL on disk. A commit is one transaction for every job
//!   queued meanwhile (group commit); consecutive commits and refusals go in as one multi-row
//!   insert each. The operations' primary key `(domain, model, version)` makes a second
//!   operation at one version impossible: such a commit fails whole.
//! - Schema: migrations are numbered files in `postgres/`, applied at start in one
//!   transaction under an advisory lock, so that two servers starting at once migrate once;
//!   a database whose schema is newer than this server knows is refused.
//! - Reads: loads and catch-ups are plain queries; history and query answers read one
//!   `REPEATABLE READ` snapshot. A query is evaluated in Rust over the rows it fetches, a
//!   page of [`SCAN_PAGE`] models at a time, so it holds at most a page plus the models
//!   the query's scan limit lets it read (`QueryLimits`); index ranges are answered by the
//!   `index_entries` primary key.
//!
//! [`RedbStore`]: super::RedbStore

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Bound;
use std::str::FromStr;
use std::sync::Arc;

use concord_ot::ReplicaId;
use concord_protocol::{
    CollectionId, CommittedOperation, HistoryOperation, Identity, ModelId, ModelSnapshot,
    ServerMessage, Timestamp, User, UserId,
};
use concord_query::{IndexKey, IndexScan, KeyBounds, Path};
use concord_sync::host::{
    CollectionConfig, HistoryRead, HistorySource, HostConfig, Loaded, ModelRecord, QueryEntry,
    QueryLimits, QueryModelData, QueryRead, QuerySource, ReadFailure, StoredModel, Write,
    history_reply, query_reply,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Transaction};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::runtime::Handle;
use tokio_postgres::types::ToSql;
use tokio_postgres::{IsolationLevel, NoTls};

pub(crate) mod cluster;
mod tls;

use super::copy::Row;
use super::{
    DomainWrites, ServerStore, StoreError, StoredCheckpoint, StoredDecision, failed_history,
    failed_query,
};
use crate::types::ModelKey;

/// The schema migrations, in order: schema `n` is the first `n` of them applied.
const MIGRATIONS: &[&str] = &[
    include_str!("postgres/0001_initial.sql"),
    include_str!("postgres/0002_identities.sql"),
    include_str!("postgres/0003_writer.sql"),
    include_str!("postgres/0004_cluster.sql"),
];

/// The schema this server writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The advisory lock held while migrating and building indexes ("concord" in ASCII).
const MIGRATION_LOCK: i64 = 0x0063_6f6e_636f_7264;

/// Connections in the pool: the writer's, plus reads of model tasks and connections.
const POOL_SIZE: usize = 16;

/// How long connecting may take when the URL does not say (`connect_timeout`): a
/// PostgreSQL that does not answer is then retried, or reported, rather than waited on.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Models fetched per round trip when a query scans.
pub(crate) const SCAN_PAGE: i64 = 256;

/// The server store in a PostgreSQL database.
#[derive(Clone)]
pub(crate) struct PostgresStore {
    pool: Pool,
    /// Where the database is, without credentials (for messages).
    target: Arc<str>,
    /// The writer epoch this store raised when it connected: its writes go in only while
    /// the database still holds it (`0003_writer.sql`).
    epoch: i64,
    /// When this server is a cluster node: its leases, which every commit checks.
    leases: Option<Arc<cluster::NodeLeases>>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").field("target", &self.target).finish_non_exhaustive()
    }
}

/// `error` as a store error: [`StoreError::Unavailable`] when the connection or the server
/// went away or is not taking work yet (worth retrying on a fresh connection).
fn pg(error: tokio_postgres::Error) -> StoreError {
    let message = match error.as_db_error() {
        Some(db) => {
            format!("PostgreSQL refused a statement ({}): {}", db.code().code(), db.message())
        }
        None if is_transient(&error) => format!("the PostgreSQL connection failed: {error}"),
        None => format!("PostgreSQL failed: {error}"),
    };
    if is_transient(&error) {
        StoreError::Unavailable(message)
    } else {
        StoreError::Backend(message)
    }
}

/// `error` and what caused it, as far down as it goes ("db error: FATAL: ..." rather than
/// "db error").
fn with_causes(error: &tokio_postgres::Error) -> String {
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(error);
    while let Some(error) = cause {
        text = format!("{text}: {error}");
        cause = error.source();
    }
    text
}

/// Whether `error` says the connection or the server went away or is not taking work yet.
fn is_transient(error: &tokio_postgres::Error) -> bool {
    match error.as_db_error() {
        Some(db) => transient(db.code().code()),
        None => {
            error.is_closed()
                || std::error::Error::source(error).is_some_and(|s| s.is::<std::io::Error>())
        }
    }
}

/// SQLSTATEs after which the same work may succeed on a fresh connection: connection
/// exceptions (class 08), a server shutting down, crashed or starting (57P01-57P03), too
/// many connections (53300), a transaction rolled back by a serialization failure or a
/// deadlock, or whose completion is unknown (class 40).
fn transient(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("57P") || code == "53300" || code.starts_with("40")
}

/// Whether `error` is the operations' primary key refusing a version that is taken.
fn version_taken(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        *db.code() == tokio_postgres::error::SqlState::UNIQUE_VIOLATION
            && db.constraint() == Some("operations_pkey")
    })
}

/// How one attempt at a commit failed.
enum Attempt {
    /// An operation's version is already stored (maybe by an earlier attempt of this very
    /// commit, whose outcome was unknown).
    VersionTaken,
    Failed(StoreError),
}

impl From<StoreError> for Attempt {
    fn from(error: StoreError) -> Attempt {
        Attempt::Failed(error)
    }
}

/// A value as stored: postcard (PostgreSQL checks its own pages; see `record` for redb).
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // postcard cannot fail on these plain types into a Vec.
    postcard::to_stdvec(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    domain: &str,
    model: Option<&ModelId>,
    record: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::CorruptRecord {
        domain: domain.to_owned(),
        model: model.cloned(),
        record: format!("{}: it does not decode: {e}", record()),
    })
}

/// PostgreSQL's `bigint` for a `u64` id or version, bit for bit (replica ids use all 64).
fn int(value: u64) -> i64 {
    value as i64
}

/// An upper bound on versions as a `bigint` (versions never reach 2^63).
fn upto(value: u64) -> i64 {
    value.min(i64::MAX as u64) as i64
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user@host:port/database`), applies
    /// the migrations it lacks, then builds the `indexes` declared that it does not have and
    /// drops those no longer declared.
    pub(crate) async fn connect(
        url: &str,
        indexes: &BTreeMap<CollectionId, Vec<Path>>,
    ) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_with(url, indexes, true).await
    }

    /// Connects as [`connect`](Self::connect), as one cluster node of several: the writer
    /// epoch is read, not raised, so that nodes starting do not fence each other (each
    /// model's lease fences instead); a single server started later still fences them all.
    pub(crate) async fn connect_node(
        url: &str,
        indexes: &BTreeMap<CollectionId, Vec<Path>>,
    ) -> Result<PostgresStore, StoreError> {
        PostgresStore::connect_with(url, indexes, false).await
    }

    async fn connect_with(
        url: &str,
        indexes: &BTreeMap<CollectionId, Vec<Path>>,
        raise_epoch: bool,
    ) -> Result<PostgresStore, StoreError> {
        let (url, tls) = tls::connection(url)?;
        let mut config = tokio_postgres::Config::from_str(&url)
            .map_err(|e| StoreError::Backend(format!("invalid PostgreSQL address: {e}")))?;
        // Acknowledged means on disk, whatever the server's or the role's default.
        let options = match config.get_options() {
            Some(options) => format!("{options} -c synchronous_commit=on"),
            None => "-c synchronous_commit=on".to_owned(),
        };
        config.options(&options);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("concord");
        }
        let target: Arc<str> = describe(&config).into();
        let recycling = ManagerConfig { recycling_method: RecyclingMethod::Fast };
        let manager = match tls {
            Some(tls) => Manager::from_config(config, tls, recycling),
            None => Manager::from_config(config, NoTls, recycling),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StoreError::Backend(format!("the PostgreSQL pool: {e}")))?;
        let mut store = PostgresStore { pool, target, epoch: 0, leases: None };
        let mut client = store.client().await?;
        migrate(&mut client).await?;
        store.epoch = if raise_epoch {
            take_over(&client).await?
        } else {
            let row =
                (client.query_one("SELECT epoch FROM concord_writer WHERE id = 1", &[]).await)
                    .map_err(pg)?;
            row.get(0)
        };
        sync_indexes(&mut client, indexes).await?;
        Ok(store)
    }

    /// This store as a cluster node's: every commit checks `leases` first.
    pub(crate) fn with_leases(mut self, leases: Arc<cluster::NodeLeases>) -> PostgresStore {
        self.leases = Some(leases);
        self
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| {
            // The pool's own words say only "db error": name what PostgreSQL or TLS said.
            let cause = match &e {
                deadpool_postgres::PoolError::Backend(e) => with_causes(e),
                other => other.to_string(),
            };
            let message = format!("cannot reach PostgreSQL at {}: {cause}", self.target);
            // Refused credentials or a missing database do not come right by waiting.
            let transient = match &e {
                deadpool_postgres::PoolError::Backend(e) => is_transient(e),
                deadpool_postgres::PoolError::Timeout(_) => true,
                _ => false,
            };
            if transient { StoreError::Unavailable(message) } else { StoreError::Backend(message) }
        })
    }

    /// The setting `name` as `connections` pooled connections held at once see it.
    #[cfg(test)]
    pub(crate) async fn pooled_settings(
        &self,
        name: &str,
        connections: usize,
    ) -> Result<Vec<String>, StoreError> {
        let mut held = Vec::new();
        let mut settings = Vec::new();
        for _ in 0..connections {
            let client = self.client().await?;
            let row = client.query_one("SELECT current_setting($1)", &[&name]).await.map_err(pg)?;
            settings.push(row.get(0));
            held.push(client);
        }
        Ok(settings)
    }

    /// Runs `read` over one `REPEATABLE READ` snapshot on the blocking pool, where it may
    /// wait on PostgreSQL (`Handle::block_on`): the host's history and query answers read
    /// through synchronous sources.
    async fn snapshot_read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&SnapshotRead<'_>) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        let runtime = Handle::current();
        tokio::task::spawn_blocking(move || {
            // Each step blocks on its own: `read` blocks on its queries in turn.
            let mut client = runtime.block_on(store.client())?;
            let txn = runtime.block_on(read_only(&mut client))?;
            let answer = read(&SnapshotRead { txn: &txn, runtime: runtime.clone() });
            runtime.block_on(txn.commit()).map_err(pg)?;
            Ok(answer)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("the store task failed: {e}")))?
    }
}

/// `host:port/database` of `config`, without its user or password.
fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let database = config.get_dbname().or(config.get_user()).unwrap_or("");
    format!("{host}:{port}/{database}")
}

async fn read_only<'c>(
    client: &'c mut deadpool_postgres::Object,
) -> Result<Transaction<'c>, StoreError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg)
}

/// Applies the migrations `client`'s database lacks, in one transaction.
async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), StoreError> {
    let txn = client.transaction().await.map_err(pg)?;
    // A second server starting meanwhile waits here, then finds the schema current.
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg)?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS concord_schema (
             version bigint NOT NULL,
             migrated_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(pg)?;
    let found: i64 = txn
        .query_opt("SELECT max(version) FROM concord_schema", &[])
        .await
        .map_err(pg)?
        .and_then(|row| row.get::<_, Option<i64>>(0))
        .unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema { found, supported: SCHEMA_VERSION });
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        txn.batch_execute(migration).await.map_err(|e| {
            StoreError::Backend(format!("migration {} failed: {}", index + 1, pg(e)))
        })?;
    }
    if found < SCHEMA_VERSION {
        txn.execute("INSERT INTO concord_schema (version) VALUES ($1)", &[&SCHEMA_VERSION])
            .await
            .map_err(pg)?;
        tracing::info!(from = found, to = SCHEMA_VERSION, "migrated the PostgreSQL schema");
    }
    txn.commit().await.map_err(pg)
}

/// Raises the writer epoch and returns it. The update waits for every transaction still
/// holding the old epoch `FOR SHARE` (a killed server's last commit, which PostgreSQL
/// finishes on its own), so what this server loads afterwards includes it; a transaction
/// of the old server that reads the epoch afterwards finds it changed and writes nothing.
async fn take_over(client: &deadpool_postgres::Object) -> Result<i64, StoreError> {
    let row = client
        .query_one("UPDATE concord_writer SET epoch = epoch + 1 WHERE id = 1 RETURNING epoch", &[])
        .await
        .map_err(pg)?;
    Ok(row.get(0))
}

/// Builds the declared indexes not built yet over every stored model, and drops those no
/// longer declared; one transaction, under the migration lock.
async fn sync_indexes(
    client: &mut deadpool_postgres::Object,
    declared: &BTreeMap<CollectionId, Vec<Path>>,
) -> Result<(), StoreError> {
    let declared: BTreeSet<(String, String)> = declared
        .iter()
        .flat_map(|(c, paths)| paths.iter().map(|p| (c.as_str().to_owned(), p.to_string())))
        .collect();
    let txn = client.transaction().await.map_err(pg)?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg)?;
    let built: BTreeSet<(String, String)> = txn
        .query("SELECT collection, path FROM indexes", &[])
        .await
        .map_err(pg)?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    if built == declared {
        return Ok(());
    }
    for (collection, path) in built.difference(&declared) {
        txn.execute(
            "DELETE FROM index_entries WHERE collection = $1 AND path = $2",
            &[collection, path],
        )
        .await
        .map_err(pg)?;
        txn.execute("DELETE FROM indexes WHERE collection = $1 AND path = $2", &[collection, path])
            .await
            .map_err(pg)?;
    }
    let mut by_collection: BTreeMap<&str, Vec<Path>> = BTreeMap::new();
    for (collection, path) in declared.difference(&built) {
        if let Ok(parsed) = Path::parse(path) {
            by_collection.entry(collection.as_str()).or_default().push(parsed);
        }
        txn.execute("INSERT INTO indexes (collection, path) VALUES ($1, $2)", &[collection, path])
            .await
            .map_err(pg)?;
    }
    let mut entries = Import::new(BUILT_ENTRIES.0, BUILT_ENTRIES.1);
    for (collection, paths) in by_collection {
        let members = txn
            .query(
                "SELECT domain, model FROM collection_models WHERE collection = $1",
                &[&collection],
            )
            .await
            .map_err(pg)?;
        let members: Vec<(String, ModelId)> = members
            .into_iter()
            .filter_map(|row| Some((row.get(0), ModelId::new(row.get::<_, &str>(1)).ok()?)))
            .collect();
        for page in members.chunks(READ_AT_ONCE) {
            // The reads of a page go out together and the connection pipelines them: one
            // round trip's wait per page, not two per model.
            let states = futures_util::future::join_all(
                page.iter().map(|(domain, model)| current(&txn, domain, model)),
            )
            .await;
            for ((domain, model), state) in page.iter().zip(states) {
                let state = match state {
                    Ok(state) => state,
                    Err(error) => {
                        // A damaged model stays out of the index; loading it reports the
                        // damage.
                        tracing::warn!(%error, model = %model, "not indexed");
                        continue;
                    }
                };
                for path in &paths {
                    let key = IndexKey::encode(path.lookup_data(&state.data));
                    let entry = super::query::entry_key(&key, model.as_str());
                    entries.push(vec![
                        Cell::Text(domain.clone()),
                        Cell::Text(collection.to_owned()),
                        Cell::Text(path.to_string()),
                        Cell::Bytes(entry),
                        Cell::Text(model.as_str().to_owned()),
                    ]);
                }
            }
            // One statement per thousand entries or so, not one per entry.
            if entries.rows >= super::copy::BATCH {
                entries.execute(&txn).await?;
                entries = Import::new(BUILT_ENTRIES.0, BUILT_ENTRIES.1);
            }
        }
    }
    entries.execute(&txn).await?;
    txn.commit().await.map_err(pg)
}

/// How many models' states [`sync_indexes`] reads at once.
const READ_AT_ONCE: usize = 64;

/// The entries of an index being built, as [`sync_indexes`] inserts them (a server already
/// serving the index may have written some).
const BUILT_ENTRIES: (&str, &[Kind]) = (
    "INSERT INTO index_entries (domain, collection, path, entry, model)
     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[])
     ON CONFLICT DO NOTHING",
    &[Kind::Text, Kind::Text, Kind::Text, Kind::Bytes, Kind::Text],
);

/// A model's latest snapshot, or the damage of a model whose snapshot is missing.
async fn snapshot_of(
    txn: &Transaction<'_>,
    domain: &str,
    model: &ModelId,
) -> Result<ModelSnapshot, StoreError> {
    let statement = txn
        .prepare_cached("SELECT snapshot FROM snapshots WHERE domain = $1 AND model = $2")
        .await
        .map_err(pg)?;
    let row = txn.query_opt(&statement, &[&domain, &model.as_str()]).await.map_err(pg)?;
    let Some(row) = row else { return Err(super::missing_snapshot(domain, model)) };
    decode(row.get(0), domain, Some(model), || super::ITS_SNAPSHOT.into())
}

/// The operations of a model in `(after, through]`, at most `limit`, with their users.
/// The newest checkpoint of `key` at or before `version`: its version, and the checkpoint or
/// the damage that keeps it from being read.
async fn checkpoint_in(
    client: &impl deadpool_postgres::GenericClient,
    key: &ModelKey,
    version: u64,
) -> Result<Option<StoredCheckpoint>, StoreError> {
    let statement = client
        .prepare_cached(
            "SELECT version, snapshot FROM checkpoints
             WHERE domain = $1 AND model = $2 AND version <= $3
             ORDER BY version DESC LIMIT 1",
        )
        .await
        .map_err(pg)?;
    let row = client
        .query_opt(&statement, &[&&*key.domain, &key.model.as_str(), &upto(version)])
        .await
        .map_err(pg)?;
    Ok(row.map(|row| {
        let at = row.get::<_, i64>(0) as u64;
        let checkpoint =
            decode(row.get(1), &key.domain, Some(&key.model), || format!("checkpoint {at}"));
        (at, checkpoint)
    }))
}

async fn operations_in(
    txn: &impl deadpool_postgres::GenericClient,
    domain: &str,
    model: &ModelId,
    after: u64,
    through: u64,
    limit: usize,
) -> Result<Vec<(CommittedOperation, Option<UserId>)>, StoreError> {
    if after >= through || limit == 0 {
        return Ok(Vec::new());
    }
    let statement = txn
        .prepare_cached(
            "SELECT version, operation, user_id FROM operations
             WHERE domain = $1 AND model = $2 AND version > $3 AND version <= $4
             ORDER BY version LIMIT $5",
        )
        .await
        .map_err(pg)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let params: [&(dyn ToSql + Sync); 5] =
        [&domain, &model.as_str(), &upto(after), &upto(through), &limit];
    let rows = txn.query(&statement, &params).await.map_err(pg)?;
    rows.iter()
        .map(|row| {
            let version: i64 = row.get(0);
            let operation =
                decode(row.get(1), domain, Some(model), || format!("operation {version}"))?;
            Ok((operation, row.get::<_, Option<String>>(2).map(UserId)))
        })
        .collect()
}

/// A model's state: its latest snapshot and the operations after it, applied.
async fn current(
    txn: &Transaction<'_>,
    domain: &str,
    model: &ModelId,
) -> Result<QueryModelData, StoreError> {
    let snapshot = snapshot_of(txn, domain, model).await?;
    let operations =
        operations_in(txn, domain, model, snapshot.version, u64::MAX, usize::MAX).await?;
    super::current_state(domain, model, snapshot, operations.into_iter().map(|(op, _)| Ok(op)))
}

async fn collection_in(
    client: &impl deadpool_postgres::GenericClient,
    domain: &str,
    collection: &CollectionId,
) -> Result<Option<CollectionConfig>, StoreError> {
    let statement = client
        .prepare_cached("SELECT config FROM collections WHERE domain = $1 AND collection = $2")
        .await
        .map_err(pg)?;
    match client.query_opt(&statement, &[&domain, &collection.as_str()]).await.map_err(pg)? {
        Some(row) => decode::<CollectionConfig>(row.get(0), domain, None, || {
            super::collection_record(collection)
        })
        .map(Some),
        None => Ok(None),
    }
}

#[async_trait::async_trait]
impl ServerStore for PostgresStore {
    async fn load(&self, key: &ModelKey) -> Result<Loaded, StoreError> {
        let mut client = self.client().await?;
        let txn = read_only(&mut client).await?;
        let (domain, model) = (&*key.domain, &key.model);
        let statement = txn
            .prepare_cached("SELECT record FROM models WHERE domain = $1 AND model = $2")
            .await
            .map_err(pg)?;
        let Some(row) = txn.query_opt(&statement, &[&domain, &model.as_str()]).await.map_err(pg)?
        else {
            let statement = txn
                .prepare_cached("SELECT 1 FROM deleted WHERE domain = $1 AND model = $2")
                .await
                .map_err(pg)?;
            let deleted =
                txn.query_opt(&statement, &[&domain, &model.as_str()]).await.map_err(pg)?;
            return Ok(Loaded::Absent { deleted: deleted.is_some() });
        };
        let record: ModelRecord = decode(row.get(0), domain, Some(model), || "its record".into())?;
        let collection = collection_in(&txn, domain, &record.collection)
            .await
            .map_err(|e| super::failing_its_model(e, domain, model))?;
        let snapshot = snapshot_of(&txn, domain, model).await?;
        let mut authors = BTreeMap::new();
        let operations = operations_in(&txn, domain, model, snapshot.version, u64::MAX, usize::MAX)
            .await?
            .into_iter()
            .map(|(operation, user)| {
                if let Some(user) = user {
                    authors.insert(operation.author.clone(), user);
                }
                operation
            })
            .collect();
        let statement = txn
            .prepare_cached(
                "SELECT replica, seq, decision FROM last_decisions WHERE domain = $1 AND model = $2",
            )
            .await
            .map_err(pg)?;
        let mut last_decisions = BTreeMap::new();
        for row in txn.query(&statement, &[&domain, &model.as_str()]).await.map_err(pg)? {
            let replica = row.get::<_, i64>(0) as u64;
            let seq = row.get::<_, i64>(1) as u64;
            let decision: StoredDecision = decode(row.get(2), domain, Some(model), || {
                format!("replica {replica}'s last decision")
            })?;
            last_decisions.insert(ReplicaId(replica), (seq, decision.into()));
        }
        txn.commit().await.map_err(pg)?;
        Ok(Loaded::Model(Box::new(StoredModel {
            record,
            collection,
            snapshot,
            operations,
            last_decisions,
            authors,
        })))
    }

    async fn operations(
        &self,
        key: &ModelKey,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<HistoryOperation>, StoreError> {
        let client = self.client().await?;
        let operations =
            operations_in(&client, &key.domain, &key.model, after, through, limit).await?;
        Ok(operations
            .into_iter()
            .map(|(operation, user)| HistoryOperation { operation, user })
            .collect())
    }

    async fn checkpoint_at_or_before(
        &self,
        key: &ModelKey,
        version: u64,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        checkpoint_in(&self.client().await?, key, version).await
    }

    async fn model_keys(
        &self,
        after: Option<(String, String)>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let client = self.client().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // The key columns sort by bytes (`COLLATE "C"`), as the embedded store's keys do.
        let rows = match &after {
            Some((domain, model)) => {
                client
                    .query(
                        "SELECT domain, model FROM models WHERE (domain, model) > ($1, $2)
                         ORDER BY domain, model LIMIT $3",
                        &[domain, model, &limit],
                    )
                    .await
            }
            None => {
                client
                    .query(
                        "SELECT domain, model FROM models ORDER BY domain, model LIMIT $1",
                        &[&limit],
                    )
                    .await
            }
        }
        .map_err(pg)?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    async fn collection(
        &self,
        domain: &str,
        collection: &CollectionId,
    ) -> Result<Option<CollectionConfig>, StoreError> {
        let client = self.client().await?;
        collection_in(&client, domain, collection).await
    }

    async fn replica_owner(
        &self,
        domain: &str,
        replica: ReplicaId,
    ) -> Result<Option<UserId>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT owner FROM replica_owners WHERE domain = $1 AND replica = $2")
            .await
            .map_err(pg)?;
        let row = client.query_opt(&statement, &[&domain, &int(replica.0)]).await.map_err(pg)?;
        Ok(row.map(|row| UserId(row.get(0))))
    }

    async fn identities(
        &self,
        domain: &str,
        max_users: usize,
    ) -> Result<Vec<Identity>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(
                "SELECT user_id, display_name, email FROM (
                     SELECT user_id, display_name, email, seen FROM identities WHERE domain = $1
                     ORDER BY seen DESC, user_id DESC LIMIT $2
                 ) AS newest ORDER BY seen, user_id",
            )
            .await
            .map_err(pg)?;
        let limit = i64::try_from(max_users).unwrap_or(i64::MAX);
        let rows = client.query(&statement, &[&domain, &limit]).await.map_err(pg)?;
        Ok(rows
            .iter()
            .map(|row| Identity {
                user: UserId(row.get(0)),
                display_name: row.get(1),
                email: row.get(2),
            })
            .collect())
    }

    async fn user(&self, domain: &str, user: &UserId) -> Result<Option<User>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached("SELECT record FROM users WHERE domain = $1 AND user_id = $2")
            .await
            .map_err(pg)?;
        match client.query_opt(&statement, &[&domain, &user.0]).await.map_err(pg)? {
            Some(row) => {
                decode::<User>(row.get(0), domain, None, || format!("user {}", user.0)).map(Some)
            }
            None => Ok(None),
        }
    }

    async fn history(&self, key: &ModelKey, read: &HistoryRead) -> ServerMessage {
        let (owned_key, owned_read) = (key.clone(), read.clone());
        let answer = self
            .snapshot_read(move |snapshot| {
                history_reply(&owned_read, &mut StoredHistory { snapshot, key: &owned_key })
            })
            .await;
        answer.unwrap_or_else(|e| failed_history(read, e))
    }

    async fn query(
        &self,
        domain: &str,
        read: &QueryRead,
        config: &Arc<HostConfig>,
        limits: &QueryLimits,
    ) -> ServerMessage {
        let (owned_domain, owned_read) = (domain.to_owned(), read.clone());
        let (owned_config, owned_limits) = (config.clone(), *limits);
        let answer = self
            .snapshot_read(move |snapshot| {
                let mut source = StoredQuery { snapshot, domain: &owned_domain };
                query_reply(&owned_read, &owned_config, &owned_limits, &mut source)
            })
            .await;
        answer.unwrap_or_else(|e| failed_query(read, config, limits, e))
    }

    /// A commit whose outcome was unknown (the connection dropped while it committed) is
    /// sent again by the writer: its operations then meet the primary key. So when a
    /// version is taken, the batch is written again with each operation already stored
    /// compared to ours: the same one means it went in before, and the rest of the batch
    /// (upserts) is written again harmlessly; a different one is
    /// [`StoreError::VersionTaken`], and nothing is written.
    async fn commit(&self, batch: &[DomainWrites]) -> Result<(), StoreError> {
        match self.try_commit(batch, false).await {
            Ok(()) => Ok(()),
            Err(Attempt::Failed(error)) => Err(error),
            Err(Attempt::VersionTaken) => match self.try_commit(batch, true).await {
                Ok(()) => Ok(()),
                Err(Attempt::Failed(error)) => Err(error),
                Err(Attempt::VersionTaken) => {
                    Err(StoreError::Backend("a version was taken and then was not".into()))
                }
            },
        }
    }
}

impl PostgresStore {
    /// Writes `batch` in one transaction; with `reconciling`, an operation whose version is
    /// taken by the same operation is skipped, by another one refuses the batch.
    async fn try_commit(&self, batch: &[DomainWrites], reconciling: bool) -> Result<(), Attempt> {
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(pg)?;
        self.still_the_writer(&txn).await?;
        if let Some(leases) = &self.leases {
            cluster::check_leases(&txn, leases, batch).await?;
        }
        let mut decided = Decided { reconciling, ..Decided::default() };
        for DomainWrites { domain, writes } in batch {
            for write in writes {
                match write {
                    Write::Commit(record) => decided.commit(domain, record),
                    Write::Refusal(record) => decided.refuse(domain, record),
                    other => {
                        // Writes of other kinds come after the commits before them.
                        decided.flush(&txn).await?;
                        write_one(&txn, domain, other).await?;
                    }
                }
            }
        }
        decided.flush(&txn).await?;
        txn.commit().await.map_err(pg)?;
        Ok(())
    }

    /// Fails with [`StoreError::Fenced`] when another server raised the writer epoch since
    /// this one connected; otherwise holds the epoch `FOR SHARE` until `txn` ends, so that
    /// a server starting meanwhile waits for this commit before it loads anything.
    async fn still_the_writer(&self, txn: &Transaction<'_>) -> Result<(), StoreError> {
        let statement = txn
            .prepare_cached("SELECT epoch FROM concord_writer WHERE id = 1 FOR SHARE")
            .await
            .map_err(pg)?;
        let current: i64 = txn.query_one(&statement, &[]).await.map_err(pg)?.get(0);
        if current == self.epoch {
            Ok(())
        } else {
            Err(StoreError::Fenced { ours: self.epoch, current })
        }
    }
}

/// Consecutive commits and refusals, inserted as one statement per table.
#[derive(Default)]
struct Decided {
    /// Operations whose version is taken by the same operation are skipped (see
    /// [`PostgresStore::commit`]).
    reconciling: bool,
    domains: Vec<String>,
    models: Vec<String>,
    versions: Vec<i64>,
    operations: Vec<Vec<u8>>,
    replicas: Vec<i64>,
    /// The last decision per `(domain, model, replica)`: one row each, as an upsert needs.
    decisions: BTreeMap<(String, String, i64), (i64, Vec<u8>)>,
}

impl Decided {
    fn commit(&mut self, domain: &str, record: &concord_sync::CommitRecord) {
        let version = record.operation.version;
        self.domains.push(domain.to_owned());
        self.models.push(record.model.as_str().to_owned());
        self.versions.push(int(version));
        self.operations.push(encode(&record.operation));
        self.replicas.push(int(record.replica.0));
        let decision =
            StoredDecision::Committed { version, timestamp: record.operation.timestamp.0 };
        self.decide(domain, &record.model, record.replica, record.seq, decision);
    }

    fn refuse(&mut self, domain: &str, record: &concord_sync::RefusalRecord) {
        let decision = StoredDecision::Refused { code: record.code.0 };
        self.decide(domain, &record.model, record.replica, record.seq, decision);
    }

    fn decide(
        &mut self,
        domain: &str,
        model: &ModelId,
        replica: ReplicaId,
        seq: u64,
        decision: StoredDecision,
    ) {
        let key = (domain.to_owned(), model.as_str().to_owned(), int(replica.0));
        self.decisions.insert(key, (int(seq), encode(&decision)));
    }

    async fn flush(&mut self, txn: &Transaction<'_>) -> Result<(), Attempt> {
        if !self.versions.is_empty() {
            // The user of each operation is its replica's owner (bound durably before the
            // host commits under it).
            let insert = "INSERT INTO operations (domain, model, version, operation, user_id)
                 SELECT o.domain, o.model, o.version, o.operation, r.owner
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[], $5::bigint[])
                      AS o(domain, model, version, operation, replica)
                 LEFT JOIN replica_owners r
                      ON r.domain = o.domain AND r.replica = o.replica";
            let params: [&(dyn ToSql + Sync); 5] =
                [&self.domains, &self.models, &self.versions, &self.operations, &self.replicas];
            if self.reconciling {
                let statement = txn
                    .prepare_cached(&format!("{insert} ON CONFLICT DO NOTHING"))
                    .await
                    .map_err(pg)?;
                txn.execute(&statement, &params).await.map_err(pg)?;
                self.check_stored(txn).await?;
            } else {
                let statement = txn.prepare_cached(insert).await.map_err(pg)?;
                match txn.execute(&statement, &params).await {
                    Ok(_) => {}
                    Err(error) if version_taken(&error) => return Err(Attempt::VersionTaken),
                    Err(error) => return Err(pg(error).into()),
                }
            }
        }
        if !self.decisions.is_empty() {
            let statement = txn
                .prepare_cached(
                    "INSERT INTO last_decisions (domain, model, replica, seq, decision)
                     SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[],
                                          $5::bytea[])
                     ON CONFLICT (domain, model, replica)
                     DO UPDATE SET seq = excluded.seq, decision = excluded.decision",
                )
                .await
                .map_err(pg)?;
            let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((domain, model, replica), (seq, decision)) in std::mem::take(&mut self.decisions) {
                columns.0.push(domain);
                columns.1.push(model);
                columns.2.push(replica);
                columns.3.push(seq);
                columns.4.push(decision);
            }
            let params: [&(dyn ToSql + Sync); 5] =
                [&columns.0, &columns.1, &columns.2, &columns.3, &columns.4];
            txn.execute(&statement, &params).await.map_err(pg)?;
        }
        *self = Decided { reconciling: self.reconciling, ..Decided::default() };
        Ok(())
    }

    /// After inserting with conflicts skipped: every operation of ours must now be stored
    /// as it is (a later statement, so it sees what other transactions committed meanwhile).
    async fn check_stored(&self, txn: &Transaction<'_>) -> Result<(), StoreError> {
        let statement = txn
            .prepare_cached(
                "SELECT o.domain, o.model, o.version
                 FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[])
                      AS o(domain, model, version, operation)
                 JOIN operations s
                      ON s.domain = o.domain AND s.model = o.model AND s.version = o.version
                 WHERE s.operation <> o.operation
                 LIMIT 1",
            )
            .await
            .map_err(pg)?;
        let params: [&(dyn ToSql + Sync); 4] =
            [&self.domains, &self.models, &self.versions, &self.operations];
        let Some(row) = txn.query_opt(&statement, &params).await.map_err(pg)? else {
            return Ok(());
        };
        let (domain, model, version): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        let model = ModelId::new(&model).map_err(|e| StoreError::CorruptRecord {
            domain: domain.clone(),
            model: None,
            record: e.to_string(),
        })?;
        Err(StoreError::VersionTaken { domain, model, version: version as u64 })
    }
}

/// Executes `sql` with `params` as a cached prepared statement.
async fn run(
    txn: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<(), StoreError> {
    let statement = txn.prepare_cached(sql).await.map_err(pg)?;
    txn.execute(&statement, params).await.map_err(pg)?;
    Ok(())
}

const PUT_MODEL: &str = "INSERT INTO models (domain, model, record) VALUES ($1, $2, $3)
     ON CONFLICT (domain, model) DO UPDATE SET record = excluded.record";
const PUT_SNAPSHOT: &str = "INSERT INTO snapshots (domain, model, snapshot) VALUES ($1, $2, $3)
     ON CONFLICT (domain, model) DO UPDATE SET snapshot = excluded.snapshot";
const PUT_CHECKPOINT: &str =
    "INSERT INTO checkpoints (domain, model, version, snapshot) VALUES ($1, $2, $3, $4)
     ON CONFLICT (domain, model, version) DO UPDATE SET snapshot = excluded.snapshot";

impl PostgresStore {
    /// Whether the database holds nothing the server stores: `concord store copy` fills only
    /// such a one.
    pub(crate) async fn holds_nothing(&self) -> Result<bool, StoreError> {
        let tables = ["models", "deleted", "collections", "users", "replica_owners", "identities"];
        let exists: Vec<String> =
            tables.iter().map(|table| format!("EXISTS (SELECT 1 FROM {table})")).collect();
        let sql = format!("SELECT NOT ({})", exists.join(" OR "));
        let row = self.client().await?.query_one(&sql, &[]).await.map_err(pg)?;
        Ok(row.get(0))
    }

    /// Writes `rows` of an embedded store (`concord store copy`) in one transaction, one
    /// statement per table.
    pub(crate) async fn import(&self, rows: &[Row]) -> Result<(), StoreError> {
        let mut tables = IMPORTS.map(|(sql, types)| Import::new(sql, types));
        for row in rows {
            let (table, cells) = import_cells(row);
            tables[table].push(cells);
        }
        let mut client = self.client().await?;
        let txn = client.transaction().await.map_err(pg)?;
        for table in &tables {
            table.execute(&txn).await?;
        }
        txn.commit().await.map_err(pg)
    }
}

/// What `concord store copy` inserts, table by table, in this order: an operation's user is
/// set after the operations are in. Each statement takes one array per column.
const IMPORTS: [(&str, &[Kind]); 14] = {
    use Kind::{Bytes, Int, MaybeText, Text};
    [
        (
            "INSERT INTO models (domain, model, record)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])",
            &[Text, Text, Bytes],
        ),
        (
            "INSERT INTO collection_models (domain, collection, model)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[])",
            &[Text, Text, Text],
        ),
        (
            "INSERT INTO snapshots (domain, model, snapshot)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])",
            &[Text, Text, Bytes],
        ),
        (
            "INSERT INTO checkpoints (domain, model, version, snapshot)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[])",
            &[Text, Text, Int, Bytes],
        ),
        (
            "INSERT INTO operations (domain, model, version, operation)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[])",
            &[Text, Text, Int, Bytes],
        ),
        (
            "UPDATE operations o SET user_id = u.user_id
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[])
                  AS u(domain, model, version, user_id)
             WHERE o.domain = u.domain AND o.model = u.model AND o.version = u.version",
            &[Text, Text, Int, Text],
        ),
        (
            "INSERT INTO last_decisions (domain, model, replica, seq, decision)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[],
                                  $5::bytea[])",
            &[Text, Text, Int, Int, Bytes],
        ),
        (
            "INSERT INTO deleted (domain, model, deleted_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])",
            &[Text, Text, Int],
        ),
        (
            "INSERT INTO collections (domain, collection, config)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])",
            &[Text, Text, Bytes],
        ),
        (
            "INSERT INTO users (domain, user_id, record)
             SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])",
            &[Text, Text, Bytes],
        ),
        (
            "INSERT INTO replica_owners (domain, replica, owner)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[])",
            &[Text, Int, Text],
        ),
        (
            "INSERT INTO identities (domain, user_id, display_name, email, seen)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[])",
            &[Text, Text, MaybeText, MaybeText, Int],
        ),
        (
            "INSERT INTO indexes (collection, path)
             SELECT * FROM unnest($1::text[], $2::text[])",
            &[Text, Text],
        ),
        (
            "INSERT INTO index_entries (domain, collection, path, entry, model)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::text[])",
            &[Text, Text, Text, Bytes, Text],
        ),
    ]
};

/// The type of one column of an [`Import`].
#[derive(Clone, Copy)]
enum Kind {
    Text,
    MaybeText,
    Int,
    Bytes,
}

/// One value of a row to import.
enum Cell {
    Text(String),
    MaybeText(Option<String>),
    Int(i64),
    Bytes(Vec<u8>),
}

/// One column of an [`Import`]: its values, as the array the statement takes.
enum Column {
    Text(Vec<String>),
    MaybeText(Vec<Option<String>>),
    Int(Vec<i64>),
    Bytes(Vec<Vec<u8>>),
}

/// The rows of one table that one batch of `concord store copy` inserts.
struct Import {
    sql: &'static str,
    columns: Vec<Column>,
    rows: usize,
}

impl Import {
    fn new(sql: &'static str, kinds: &[Kind]) -> Import {
        let columns = kinds
            .iter()
            .map(|kind| match kind {
                Kind::Text => Column::Text(Vec::new()),
                Kind::MaybeText => Column::MaybeText(Vec::new()),
                Kind::Int => Column::Int(Vec::new()),
                Kind::Bytes => Column::Bytes(Vec::new()),
            })
            .collect();
        Import { sql, columns, rows: 0 }
    }

    fn push(&mut self, cells: Vec<Cell>) {
        for (column, cell) in self.columns.iter_mut().zip(cells) {
            match (column, cell) {
                (Column::Text(values), Cell::Text(value)) => values.push(value),
                (Column::MaybeText(values), Cell::MaybeText(value)) => values.push(value),
                (Column::Int(values), Cell::Int(value)) => values.push(value),
                (Column::Bytes(values), Cell::Bytes(value)) => values.push(value),
                _ => unreachable!("a row's cells follow its table's columns"),
            }
        }
        self.rows += 1;
    }

    async fn execute(&self, txn: &Transaction<'_>) -> Result<(), StoreError> {
        if self.rows == 0 {
            return Ok(());
        }
        let params: Vec<&(dyn ToSql + Sync)> = self
            .columns
            .iter()
            .map(|column| -> &(dyn ToSql + Sync) {
                match column {
                    Column::Text(values) => values,
                    Column::MaybeText(values) => values,
                    Column::Int(values) => values,
                    Column::Bytes(values) => values,
                }
            })
            .collect();
        run(txn, self.sql, &params).await
    }
}

/// Which of [`IMPORTS`] takes `row`, and its values, encoded as this backend's writes encode
/// them.
fn import_cells(row: &Row) -> (usize, Vec<Cell>) {
    let text = |value: &str| Cell::Text(value.to_owned());
    let number = |value: u64| Cell::Int(int(value));
    match row {
        Row::Model { domain, model, record } => {
            (0, vec![text(domain), text(model.as_str()), Cell::Bytes(encode(record))])
        }
        Row::Member { domain, collection, model } => {
            (1, vec![text(domain), text(collection), text(model)])
        }
        Row::Snapshot { domain, model, snapshot } => {
            (2, vec![text(domain), text(model.as_str()), Cell::Bytes(encode(snapshot))])
        }
        Row::Checkpoint { domain, model, snapshot } => {
            let version = number(snapshot.version);
            (3, vec![text(domain), text(model.as_str()), version, Cell::Bytes(encode(snapshot))])
        }
        Row::Operation { domain, model, operation } => {
            let version = number(operation.version);
            (4, vec![text(domain), text(model.as_str()), version, Cell::Bytes(encode(operation))])
        }
        Row::OperationUser { domain, model, version, user } => {
            (5, vec![text(domain), text(model.as_str()), number(*version), text(&user.0)])
        }
        Row::LastDecision { domain, model, replica, seq, decision } => {
            let decision = Cell::Bytes(encode(decision));
            (6, vec![text(domain), text(model.as_str()), number(*replica), number(*seq), decision])
        }
        Row::Deleted { domain, model, at } => (7, vec![text(domain), text(model), Cell::Int(*at)]),
        Row::Collection { domain, collection, config } => {
            (8, vec![text(domain), text(collection.as_str()), Cell::Bytes(encode(config))])
        }
        Row::User { domain, user } => {
            (9, vec![text(domain), text(&user.id.0), Cell::Bytes(encode(user))])
        }
        Row::ReplicaOwner { domain, replica, owner } => {
            (10, vec![text(domain), number(*replica), text(&owner.0)])
        }
        Row::Identity { domain, identity, seen } => {
            let (name, email) = (identity.display_name.clone(), identity.email.clone());
            let cells = vec![
                text(domain),
                text(&identity.user.0),
                Cell::MaybeText(name),
                Cell::MaybeText(email),
                Cell::Int(*seen),
            ];
            (11, cells)
        }
        Row::Index { collection, path } => (12, vec![text(collection), text(path)]),
        Row::IndexEntry { domain, collection, path, entry, model } => {
            let entry = Cell::Bytes(entry.clone());
            (13, vec![text(domain), text(collection), text(path), entry, text(model)])
        }
    }
}

/// One write other than a commit or a refusal.
async fn write_one(txn: &Transaction<'_>, domain: &str, write: &Write) -> Result<(), StoreError> {
    match write {
        Write::CreateModel { model, record, snapshot } => {
            let model = model.as_str();
            run(txn, PUT_MODEL, &[&domain, &model, &encode(record)]).await?;
            run(
                txn,
                "INSERT INTO collection_models (domain, collection, model) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&domain, &record.collection.as_str(), &model],
            )
            .await?;
            let bytes = encode(snapshot);
            run(txn, PUT_SNAPSHOT, &[&domain, &model, &bytes]).await?;
            // The model as created: where its history starts.
            run(txn, PUT_CHECKPOINT, &[&domain, &model, &int(snapshot.version), &bytes]).await
        }
        Write::Snapshot { model, snapshot } => {
            let (model, bytes) = (model.as_str(), encode(snapshot));
            run(txn, PUT_SNAPSHOT, &[&domain, &model, &bytes]).await?;
            run(txn, PUT_CHECKPOINT, &[&domain, &model, &int(snapshot.version), &bytes]).await
        }
        Write::SetGrants { model, record } => {
            run(txn, PUT_MODEL, &[&domain, &model.as_str(), &encode(record)]).await
        }
        Write::IndexModel { model, collection, keys } => {
            let model = model.as_str();
            run(
                txn,
                "DELETE FROM index_entries WHERE domain = $1 AND model = $2",
                &[&domain, &model],
            )
            .await?;
            if keys.is_empty() {
                return Ok(());
            }
            let paths: Vec<String> = keys.iter().map(|(path, _)| path.to_string()).collect();
            let entries: Vec<Vec<u8>> =
                keys.iter().map(|(_, key)| super::query::entry_key(key, model)).collect();
            run(
                txn,
                "INSERT INTO index_entries (domain, collection, path, entry, model)
                 SELECT $1, $2, e.path, e.entry, $3
                 FROM unnest($4::text[], $5::bytea[]) AS e(path, entry)
                 ON CONFLICT DO NOTHING",
                &[&domain, &collection.as_str(), &model, &paths, &entries],
            )
            .await
        }
        Write::DeleteModel { model, at } => {
            let model = model.as_str();
            for table in [
                "index_entries",
                "models",
                "collection_models",
                "snapshots",
                "operations",
                "last_decisions",
                "checkpoints",
            ] {
                let sql = format!("DELETE FROM {table} WHERE domain = $1 AND model = $2");
                run(txn, &sql, &[&domain, &model]).await?;
            }
            run(
                txn,
                "INSERT INTO deleted (domain, model, deleted_at) VALUES ($1, $2, $3)
                 ON CONFLICT (domain, model) DO UPDATE SET deleted_at = excluded.deleted_at",
                &[&domain, &model, &at.0],
            )
            .await
        }
        Write::PutCollection { collection, config } => {
            run(
                txn,
                "INSERT INTO collections (domain, collection, config) VALUES ($1, $2, $3)
                 ON CONFLICT (domain, collection) DO UPDATE SET config = excluded.config",
                &[&domain, &collection.as_str(), &encode(config)],
            )
            .await
        }
        Write::PutUser { user } => {
            run(
                txn,
                "INSERT INTO users (domain, user_id, record) VALUES ($1, $2, $3)
                 ON CONFLICT (domain, user_id) DO UPDATE SET record = excluded.record",
                &[&domain, &user.id.0, &encode(user)],
            )
            .await
        }
        Write::PutIdentity { identity, seen } => {
            run(
                txn,
                "INSERT INTO identities (domain, user_id, display_name, email, seen)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (domain, user_id) DO UPDATE SET display_name = excluded.display_name,
                 email = excluded.email, seen = excluded.seen",
                &[&domain, &identity.user.0, &identity.display_name, &identity.email, &seen.0],
            )
            .await
        }
        Write::BindReplica { replica, user } => {
            // The first owner stays: a replica id never changes hands.
            run(
                txn,
                "INSERT INTO replica_owners (domain, replica, owner) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
                &[&domain, &int(replica.0), &user.0],
            )
            .await
        }
        Write::Commit(_) | Write::Refusal(_) => Ok(()),
    }
}

/// One read-only snapshot, read from a blocking thread.
struct SnapshotRead<'a> {
    txn: &'a Transaction<'a>,
    runtime: Handle,
}

impl SnapshotRead<'_> {
    fn wait<T>(
        &self,
        future: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, ReadFailure> {
        self.runtime.block_on(future).map_err(ReadFailure::from)
    }
}

struct StoredHistory<'a> {
    snapshot: &'a SnapshotRead<'a>,
    key: &'a ModelKey,
}

impl HistorySource for StoredHistory<'_> {
    fn oldest_checkpoint(&mut self) -> Result<Option<u64>, ReadFailure> {
        let (txn, key) = (self.snapshot.txn, self.key);
        self.snapshot.wait(async move {
            let row = txn
                .query_one(
                    "SELECT min(version) FROM checkpoints WHERE domain = $1 AND model = $2",
                    &[&&*key.domain, &key.model.as_str()],
                )
                .await
                .map_err(pg)?;
            Ok(row.get::<_, Option<i64>>(0).map(|v| v as u64))
        })
    }

    fn checkpoint_at_or_before(
        &mut self,
        version: u64,
    ) -> Result<Option<ModelSnapshot>, ReadFailure> {
        let (txn, key) = (self.snapshot.txn, self.key);
        self.snapshot.wait(async move {
            match checkpoint_in(txn, key, version).await? {
                Some((_, checkpoint)) => checkpoint.map(Some),
                None => Ok(None),
            }
        })
    }

    fn operations(
        &mut self,
        after: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<HistoryOperation>, ReadFailure> {
        let (txn, key) = (self.snapshot.txn, self.key);
        self.snapshot.wait(async move {
            let operations =
                operations_in(txn, &key.domain, &key.model, after, through, limit).await?;
            Ok(operations
                .into_iter()
                .map(|(operation, user)| HistoryOperation { operation, user })
                .collect())
        })
    }

    fn commit_time(&mut self, version: u64) -> Result<Option<Timestamp>, ReadFailure> {
        let (txn, key) = (self.snapshot.txn, self.key);
        self.snapshot.wait(async move {
            let operations =
                operations_in(txn, &key.domain, &key.model, version.saturating_sub(1), version, 1)
                    .await?;
            Ok(operations.first().map(|(operation, _)| operation.timestamp))
        })
    }
}

struct StoredQuery<'a> {
    snapshot: &'a SnapshotRead<'a>,
    domain: &'a str,
}

struct StoredEntry<'a> {
    snapshot: &'a SnapshotRead<'a>,
    domain: &'a str,
    model: ModelId,
    record: ModelRecord,
}

impl QueryEntry for StoredEntry<'_> {
    fn model(&self) -> &ModelId {
        &self.model
    }
    fn record(&self) -> &ModelRecord {
        &self.record
    }
    fn load(&mut self) -> Result<QueryModelData, ReadFailure> {
        self.snapshot.wait(current(self.snapshot.txn, self.domain, &self.model))
    }
}

/// One page of a scan: `(model, record)` rows (no record: the model is gone).
type Page = Vec<(String, Option<Vec<u8>>)>;

impl StoredQuery<'_> {
    /// The members of `collection` after `after`, by model id.
    async fn members(&self, collection: &str, after: &str) -> Result<Page, StoreError> {
        let rows = self
            .snapshot
            .txn
            .query(
                "SELECT c.model, m.record FROM collection_models c
                 LEFT JOIN models m ON m.domain = c.domain AND m.model = c.model
                 WHERE c.domain = $1 AND c.collection = $2 AND c.model > $3
                 ORDER BY c.model LIMIT $4",
                &[&self.domain, &collection, &after, &SCAN_PAGE],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(|row| (row.get(0), row.get(1))).collect())
    }

    /// The entries of an index within `(lower, upper)`, in `ascending` order or not, and
    /// the entry key of the last one.
    async fn entries(
        &self,
        collection: &str,
        path: &str,
        lower: &Bound<Vec<u8>>,
        upper: &Bound<Vec<u8>>,
        ascending: bool,
    ) -> Result<(Page, Option<Vec<u8>>), StoreError> {
        let mut sql = String::from(
            "SELECT e.model, m.record, e.entry FROM index_entries e
             LEFT JOIN models m ON m.domain = e.domain AND m.model = e.model
             WHERE e.domain = $1 AND e.collection = $2 AND e.path = $3",
        );
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&self.domain, &collection, &path];
        for (bound, below) in [(lower, false), (upper, true)] {
            let (operator, key) = match (bound, below) {
                (Bound::Included(key), false) => (">=", key),
                (Bound::Excluded(key), false) => (">", key),
                (Bound::Included(key), true) => ("<=", key),
                (Bound::Excluded(key), true) => ("<", key),
                (Bound::Unbounded, _) => continue,
            };
            params.push(key);
            sql.push_str(&format!(" AND e.entry {operator} ${}", params.len()));
        }
        params.push(&SCAN_PAGE);
        let order = if ascending { "ASC" } else { "DESC" };
        sql.push_str(&format!(" ORDER BY e.entry {order} LIMIT ${}", params.len()));
        let rows = self.snapshot.txn.query(&sql, &params).await.map_err(pg)?;
        let last = rows.last().map(|row| row.get::<_, Vec<u8>>(2));
        Ok((rows.iter().map(|row| (row.get(0), row.get(1))).collect(), last))
    }

    /// Offers each row of `page` to `visit`; `false` once it wants no more.
    fn offer(
        &self,
        page: Page,
        visit: &mut dyn FnMut(&mut dyn QueryEntry) -> Result<bool, ReadFailure>,
    ) -> Result<bool, ReadFailure> {
        for (model, record) in page {
            let Some(record) = record else { continue };
            let id = ModelId::new(&model).ok();
            let record: ModelRecord =
                decode(&record, self.domain, id.as_ref(), || "its record".into())?;
            let model = ModelId::new(&model).map_err(|e| ReadFailure::internal(e.to_string()))?;
            let mut entry =
                StoredEntry { snapshot: self.snapshot, domain: self.domain, model, record };
            if !visit(&mut entry)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl QuerySource for StoredQuery<'_> {
    fn collection(
        &mut self,
        collection: &CollectionId,
    ) -> Result<Option<CollectionConfig>, ReadFailure> {
        self.snapshot.wait(collection_in(self.snapshot.txn, self.domain, collection))
    }

    fn model(&mut self, model: &ModelId) -> Result<QueryModelData, ReadFailure> {
        self.snapshot.wait(current(self.snapshot.txn, self.domain, model))
    }

    fn scan(
        &mut self,
        collection: &CollectionId,
        index: Option<&IndexScan>,
        visit: &mut dyn FnMut(&mut dyn QueryEntry) -> Result<bool, ReadFailure>,
    ) -> Result<(), ReadFailure> {
        let c = collection.as_str();
        match index {
            None => {
                let mut after = String::new();
                loop {
                    let page = self.snapshot.wait(self.members(c, &after))?;
                    let full = page.len() as i64 == SCAN_PAGE;
                    let Some((last, _)) = page.last() else { return Ok(()) };
                    after = last.clone();
                    if !self.offer(page, visit)? || !full {
                        return Ok(());
                    }
                }
            }
            Some(scan) => {
                let path = scan.path.to_string();
                let (mut lower, mut upper) = match &scan.bounds {
                    KeyBounds::Equal(key) => {
                        (Bound::Included(key.clone()), Bound::Excluded(past(key)))
                    }
                    KeyBounds::Range { lower, upper } => {
                        let lower = match lower {
                            Bound::Excluded(key) => Bound::Included(past(key)),
                            other => other.clone(),
                        };
                        let upper = match upper {
                            Bound::Included(key) => Bound::Excluded(past(key)),
                            other => other.clone(),
                        };
                        (lower, upper)
                    }
                };
                let ascending = scan.direction == concord_query::Direction::Ascending;
                loop {
                    let (page, last) =
                        self.snapshot.wait(self.entries(c, &path, &lower, &upper, ascending))?;
                    let full = page.len() as i64 == SCAN_PAGE;
                    let Some(last) = last else { return Ok(()) };
                    if ascending {
                        lower = Bound::Excluded(last);
                    } else {
                        upper = Bound::Excluded(last);
                    }
                    if !self.offer(page, visit)? || !full {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The first entry key past every entry whose index key is `key` (entry keys are the index
/// key then the model id, which never holds 0xFF).
fn past(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    end.push(0xFF);
    end
}
