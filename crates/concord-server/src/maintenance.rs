//! Looking after a server's store while no server runs on it (`concord store`): finding the
//! models whose records are damaged, rebuilding a damaged snapshot from the model's
//! checkpoints, dropping a model that cannot be served so that its collaborators are told
//! it is gone instead of failing on it for ever, and copying the embedded store into
//! PostgreSQL.
//!
//! The server itself never repairs or rewrites a damaged record (`docs/server.md`, "Store
//! integrity and restore"); restoring a backup keeps every other model's newer changes out,
//! so these are the operator's tools for when there is no backup, or only an old one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use concord_protocol::{CollectionId, ModelId, ModelSnapshot, Timestamp};
use concord_sync::host::{Loaded, Write};

use crate::config::{ServerConfig, StoreUrl};
use crate::store::{self, DomainWrites, RedbStore, ServerStore, Store, StoreError};
use crate::types::ModelKey;

/// Keys and operations are read this many at a time.
const PAGE: usize = 1_000;

/// Which store to open: the embedded one in a data directory, or PostgreSQL, with the
/// indexes the server declares (opening a store builds and drops indexes as the server would,
/// so they must be the server's).
#[derive(Debug, Clone)]
pub struct StoreLocation {
    pub data_dir: PathBuf,
    /// A PostgreSQL URL; `None` for the embedded store in `data_dir`.
    pub store: Option<StoreUrl>,
    pub indexes: BTreeMap<CollectionId, Vec<concord_query::Path>>,
}

impl From<&ServerConfig> for StoreLocation {
    fn from(config: &ServerConfig) -> StoreLocation {
        StoreLocation {
            data_dir: config.data_dir.clone(),
            store: config.store.clone(),
            indexes: config.indexes.clone(),
        }
    }
}

/// What [`check_store`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreCheck {
    /// The models read, whole.
    pub models: u64,
    /// The damaged ones, in key order.
    pub damaged: Vec<DamagedModel>,
}

/// A model with a record that fails its checksum or does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedModel {
    pub domain: String,
    /// As stored (a damaged key may not be a valid model id).
    pub model: String,
    pub kind: Damage,
    /// What is damaged, as the store reports it.
    pub damage: String,
}

/// Which record of a model is damaged, and what that costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// One of its own (record, a recent operation, a last decision, its key): the server
    /// cannot serve it.
    Model,
    /// Its snapshot, the state it is loaded from: the server cannot serve it, but every
    /// snapshot is also kept as a checkpoint, so [`rebuild_snapshot`] can put it back.
    Snapshot,
    /// Only operations older than its snapshot, or checkpoints: it is served, but the history
    /// requests that reach back to them fail.
    History,
    /// Its collection's record: no model of the collection can be served, though their own
    /// records may be whole. Restore the store; dropping the models would lose them all.
    Collection,
}

/// Why the store could not be checked, or a model not dropped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MaintenanceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("there is no store in {} (pass the server's --data-dir or --store)", .0.display())]
    NoStore(PathBuf),
    #[error("the store has no model {model} in domain {domain:?}")]
    NoModel { domain: String, model: ModelId },
    #[error(
        "{model} in domain {domain:?} is not damaged: there is nothing to rebuild or drop (a model that must go is deleted from a client, deleteModel)"
    )]
    NotDamaged { domain: String, model: ModelId },
    #[error(
        "{model} in domain {domain:?} is still served (only its history is damaged: {damage}); it is not dropped"
    )]
    StillServed { domain: String, model: ModelId, damage: String },
    #[error(
        "{model} in domain {domain:?} is whole, but its collection's record is damaged ({damage}); restore the store instead, as dropping the collection's models would lose them all"
    )]
    CollectionDamaged { domain: String, model: ModelId, damage: String },
    #[error("the store to copy is the embedded one of a data directory, not PostgreSQL")]
    NotEmbedded,
    #[error(
        "the PostgreSQL database at {0} already holds a Concord store; copy only into an empty one"
    )]
    NotEmpty(String),
    #[error(
        "the snapshot of {model} in domain {domain:?} is whole; what is damaged is not rebuilt from checkpoints ({damage})"
    )]
    SnapshotWhole { domain: String, model: ModelId, damage: String },
    #[error("the snapshot of {model} in domain {domain:?} cannot be rebuilt ({damage}): {reason}")]
    CannotRebuild { domain: String, model: ModelId, damage: String, reason: String },
    #[error(
        "the snapshot of {model} in domain {domain:?} was rebuilt from checkpoint {checkpoint}, but the model is still not served: {damage}"
    )]
    StillDamaged { domain: String, model: ModelId, checkpoint: u64, damage: String },
}

/// What [`rebuild_snapshot`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuiltSnapshot {
    /// What was damaged.
    pub damage: String,
    /// The version of the checkpoint the snapshot was rebuilt from.
    pub checkpoint: u64,
    /// The operations after it, which a load now replays (each was checked to apply).
    pub replayed: u64,
    /// Newer checkpoints passed over, with why.
    pub passed_over: Vec<String>,
}

/// Reads every model of the store whole (what serving it needs, and every operation and
/// checkpoint its history holds) and reports those with a damaged record. Servers running on a PostgreSQL
/// store go on meanwhile; the embedded store can be checked only while its server is stopped
/// (its file is locked). `progress` is called with the count of models read so far, after
/// each page of them.
pub async fn check_store(
    location: &StoreLocation,
    mut progress: impl FnMut(u64),
) -> Result<StoreCheck, MaintenanceError> {
    let store = open(location, false).await?;
    let mut check = StoreCheck::default();
    let mut after = None;
    loop {
        let keys = store.model_keys(after.clone(), PAGE).await?;
        let Some(last) = keys.last().cloned() else { break };
        for (domain, model) in keys {
            check.models += 1;
            let health = match ModelId::new(model.clone()) {
                Ok(id) => {
                    health(&*store, ModelKey { domain: domain.as_str().into(), model: id }).await?
                }
                Err(e) => Health::Damaged(Damage::Model, format!("its key: {e}")),
            };
            if let Health::Damaged(kind, damage) = health {
                check.damaged.push(DamagedModel { domain, model, kind, damage });
            }
        }
        progress(check.models);
        after = Some(last);
    }
    Ok(check)
}

/// Deletes `model` of `domain`, which the server cannot serve because a record of it is
/// damaged: every record of it goes, and its id is remembered as deleted, as a deletion from
/// a client would leave it. Its collaborators are then told it was deleted; what they
/// hold offline stays theirs. Returns what was damaged.
///
/// Refused for a model that is not damaged, that the server still serves, or that only its
/// collection's damaged record keeps from being served. Stop the servers on the store first:
/// the embedded store is locked while its server runs, and on PostgreSQL a drop (not a
/// refusal) raises the writer epoch, so a server still running stops taking writes, as it
/// would for a second server.
pub async fn drop_damaged_model(
    location: &StoreLocation,
    domain: &str,
    model: &ModelId,
    at: Timestamp,
) -> Result<String, MaintenanceError> {
    let key = ModelKey { domain: domain.into(), model: model.clone() };
    let ready =
        async |store: &dyn ServerStore| droppable(health(store, key.clone()).await?, domain, model);
    let (store, damage) = open_to_change(location, ready).await?;
    let writes = vec![Write::DeleteModel { model: model.clone(), at }];
    store.commit(&[DomainWrites { domain: domain.into(), writes }]).await?;
    Ok(damage)
}

/// Rebuilds the snapshot of `model` of `domain`, which the server cannot serve because its
/// snapshot is damaged or missing. Every snapshot the server writes is also kept as a
/// checkpoint, and every operation for good: the newest whole checkpoint that the operations
/// after it apply to becomes the snapshot again, and loading the model replays those
/// operations, so the model is served as it was, with nothing lost.
///
/// Refused for a model whose snapshot is whole, and when no checkpoint can be used. Stop the
/// servers on the store first, as for [`drop_damaged_model`].
pub async fn rebuild_snapshot(
    location: &StoreLocation,
    domain: &str,
    model: &ModelId,
) -> Result<RebuiltSnapshot, MaintenanceError> {
    let key = ModelKey { domain: domain.into(), model: model.clone() };
    let ready = async |store: &dyn ServerStore| rebuild_plan(store, &key).await;
    let (store, (rebuilt, checkpoint)) = open_to_change(location, ready).await?;
    let version = checkpoint.version;
    let writes = vec![Write::Snapshot { model: model.clone(), snapshot: checkpoint }];
    store.commit(&[DomainWrites { domain: domain.into(), writes }]).await?;
    match health(&*store, key).await? {
        Health::Healthy | Health::Damaged(Damage::History, _) => Ok(rebuilt),
        Health::Damaged(_, damage) => Err(MaintenanceError::StillDamaged {
            domain: domain.to_owned(),
            model: model.clone(),
            checkpoint: version,
            damage,
        }),
        Health::Absent => {
            Err(MaintenanceError::NoModel { domain: domain.into(), model: model.clone() })
        }
    }
}

/// Copies the embedded store of `from` (its data directory, opened with the server's indexes)
/// into the PostgreSQL database at `to`, which must hold nothing yet: every record, each
/// checked as it is read, in transactions of a thousand. `progress` is called with the count
/// of records copied so far, after each transaction. Returns that count.
///
/// The embedded store is locked while its server runs, so the copy waits for it to stop; a
/// server started on `to` afterwards serves what the embedded store held, and builds its
/// query indexes at its first start. A damaged record stops the copy (check the store first).
#[cfg(feature = "postgres")]
pub async fn copy_store(
    from: &StoreLocation,
    to: &StoreUrl,
    mut progress: impl FnMut(u64),
) -> Result<u64, MaintenanceError> {
    use crate::store::copy;
    use crate::store::postgres::PostgresStore;
    if from.store.is_some() {
        return Err(MaintenanceError::NotEmbedded);
    }
    let source = open_embedded(from).await?;
    // No index is declared on the copy, so that the server's first start builds them whole.
    let destination = PostgresStore::connect(to.expose(), &BTreeMap::new()).await?;
    if !destination.holds_nothing().await? {
        return Err(MaintenanceError::NotEmpty(to.redacted()));
    }
    let (batches, mut received) = tokio::sync::mpsc::channel(2);
    let reader = tokio::task::spawn_blocking(move || {
        copy::export(&source, |batch| batches.blocking_send(batch).is_ok())
    });
    let mut copied = 0;
    while let Some(batch) = received.recv().await {
        if let Err(error) = destination.import(&batch).await {
            drop(received);
            let _ = reader.await;
            return Err(error.into());
        }
        copied += batch.len() as u64;
        progress(copied);
    }
    reader.await.map_err(|e| StoreError::Backend(format!("reading the store failed: {e}")))??;
    Ok(copied)
}

/// Opens the store to change it once `ready` finds the change may be made, and returns what
/// `ready` found. On PostgreSQL the writer epoch is raised only then (and `ready` asked again
/// under it), so a refused change fences no running server.
async fn open_to_change<T>(
    location: &StoreLocation,
    ready: impl AsyncFn(&dyn ServerStore) -> Result<T, MaintenanceError>,
) -> Result<(Store, T), MaintenanceError> {
    let store = open(location, false).await?;
    let found = ready(&*store).await?;
    match location.store {
        None => Ok((store, found)),
        Some(_) => {
            drop((store, found));
            let store = open(location, true).await?;
            let found = ready(&*store).await?;
            Ok((store, found))
        }
    }
}

/// What rebuilding the snapshot of `key` would write (the newest checkpoint that the
/// operations after it apply to), or why it may not be rebuilt.
async fn rebuild_plan(
    store: &dyn ServerStore,
    key: &ModelKey,
) -> Result<(RebuiltSnapshot, ModelSnapshot), MaintenanceError> {
    let (domain, model) = (key.domain.to_string(), key.model.clone());
    let damage = match health(store, key.clone()).await? {
        Health::Damaged(Damage::Snapshot, damage) => damage,
        Health::Absent => return Err(MaintenanceError::NoModel { domain, model }),
        Health::Healthy => return Err(MaintenanceError::NotDamaged { domain, model }),
        Health::Damaged(_, damage) => {
            return Err(MaintenanceError::SnapshotWhole { domain, model, damage });
        }
    };
    let mut passed_over = Vec::new();
    let mut at_or_before = u64::MAX;
    while let Some((version, checkpoint)) = store.checkpoint_at_or_before(key, at_or_before).await?
    {
        match checkpoint {
            Ok(checkpoint) => match replay(store, key, &checkpoint).await? {
                Ok(replayed) => {
                    let rebuilt =
                        RebuiltSnapshot { damage, checkpoint: version, replayed, passed_over };
                    return Ok((rebuilt, checkpoint));
                }
                Err(why) => passed_over.push(format!("checkpoint {version}: {why}")),
            },
            Err(error @ StoreError::CorruptRecord { .. }) => passed_over.push(error.to_string()),
            Err(error) => return Err(error.into()),
        }
        let Some(earlier) = version.checked_sub(1) else { break };
        at_or_before = earlier;
    }
    let reason = match passed_over.is_empty() {
        true => "it has no checkpoint".to_owned(),
        false => format!("no checkpoint can be used ({})", passed_over.join("; ")),
    };
    Err(MaintenanceError::CannotRebuild { domain, model, damage, reason })
}

/// Applies every operation after `checkpoint` to a copy of it, as a load would: the count of
/// them, or why they do not apply.
async fn replay(
    store: &dyn ServerStore,
    key: &ModelKey,
    checkpoint: &ModelSnapshot,
) -> Result<Result<u64, String>, MaintenanceError> {
    let mut data = checkpoint.data.clone();
    let mut version = checkpoint.version;
    loop {
        let page = match store.operations(key, version, u64::MAX, PAGE).await {
            Ok(page) => page,
            Err(error @ StoreError::CorruptRecord { .. }) => return Ok(Err(error.to_string())),
            Err(error) => return Err(error.into()),
        };
        let full = page.len() == PAGE;
        for stored in page {
            let operation = stored.operation;
            if operation.version != version + 1 {
                return Ok(Err(format!("operation {} is missing", version + 1)));
            }
            if let Err(error) = data.apply_without_old(&operation.operation) {
                return Ok(Err(format!("operation {} does not apply: {error}", operation.version)));
            }
            version = operation.version;
        }
        if !full {
            return Ok(Ok(version - checkpoint.version));
        }
    }
}

/// What is damaged in a model that may be dropped, or why it may not.
fn droppable(health: Health, domain: &str, model: &ModelId) -> Result<String, MaintenanceError> {
    let (domain, model) = (domain.to_owned(), model.clone());
    match health {
        Health::Absent => Err(MaintenanceError::NoModel { domain, model }),
        Health::Healthy => Err(MaintenanceError::NotDamaged { domain, model }),
        Health::Damaged(Damage::History, damage) => {
            Err(MaintenanceError::StillServed { domain, model, damage })
        }
        Health::Damaged(Damage::Collection, damage) => {
            Err(MaintenanceError::CollectionDamaged { domain, model, damage })
        }
        Health::Damaged(Damage::Model | Damage::Snapshot, damage) => Ok(damage),
    }
}

/// What reading a model whole found.
enum Health {
    Absent,
    Healthy,
    Damaged(Damage, String),
}

async fn health(store: &dyn store::ServerStore, key: ModelKey) -> Result<Health, StoreError> {
    match store.load(&key).await {
        Ok(Loaded::Model(_)) => {}
        Ok(Loaded::Absent { .. }) => return Ok(Health::Absent),
        Err(StoreError::CorruptRecord { domain, model, record }) => {
            let kind = if store::names_its_collection(&record) {
                Damage::Collection
            } else if store::names_its_snapshot(&record) {
                Damage::Snapshot
            } else {
                Damage::Model
            };
            let error = StoreError::CorruptRecord { domain, model, record };
            return Ok(Health::Damaged(kind, error.to_string()));
        }
        Err(error) => return Err(error),
    }
    // Loading read the operations after the snapshot; the history holds every one, and the
    // checkpoints that opening an old version starts from.
    let history_damage = |error| Ok(Health::Damaged(Damage::History, format!("{error}")));
    let mut after = 0;
    loop {
        let page = match store.operations(&key, after, u64::MAX, PAGE).await {
            Ok(page) => page,
            Err(error @ StoreError::CorruptRecord { .. }) => return history_damage(error),
            Err(error) => return Err(error),
        };
        match page.last() {
            Some(last) if page.len() == PAGE => after = last.operation.version,
            _ => break,
        }
    }
    let mut at_or_before = u64::MAX;
    while let Some((version, checkpoint)) =
        store.checkpoint_at_or_before(&key, at_or_before).await?
    {
        match checkpoint {
            Ok(_) => {}
            Err(error @ StoreError::CorruptRecord { .. }) => return history_damage(error),
            Err(error) => return Err(error),
        }
        let Some(earlier) = version.checked_sub(1) else { break };
        at_or_before = earlier;
    }
    Ok(Health::Healthy)
}

/// Opens the store at `location`, never creating one. On PostgreSQL the writer epoch is
/// raised only to `write`: a check leaves running servers alone.
#[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
async fn open(location: &StoreLocation, write: bool) -> Result<Store, MaintenanceError> {
    #[cfg(feature = "postgres")]
    if let Some(url) = location.store.as_ref().map(StoreUrl::expose) {
        use crate::store::postgres::PostgresStore;
        let indexes = &location.indexes;
        let store = if write {
            PostgresStore::connect(url, indexes).await?
        } else {
            PostgresStore::connect_node(url, indexes).await?
        };
        return Ok(Arc::new(store));
    }
    #[cfg(not(feature = "postgres"))]
    if location.store.is_some() {
        return Err(StoreError::NotSupported(
            "a PostgreSQL store: this build has no PostgreSQL support",
        )
        .into());
    }
    Ok(Arc::new(open_embedded(location).await?))
}

/// Opens the embedded store of `location`'s data directory, never creating one.
async fn open_embedded(location: &StoreLocation) -> Result<RedbStore, MaintenanceError> {
    let file = location.data_dir.join(store::FILE_NAME);
    if !file.try_exists().map_err(StoreError::Io)? {
        return Err(MaintenanceError::NoStore(location.data_dir.clone()));
    }
    let (dir, indexes) = (location.data_dir.clone(), location.indexes.clone());
    let store = tokio::task::spawn_blocking(move || RedbStore::open_indexed(&dir, &indexes))
        .await
        .map_err(|e| StoreError::Backend(format!("opening the store failed: {e}")))??;
    Ok(store)
}
