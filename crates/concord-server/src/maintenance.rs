//! Looking after a server's store while no server runs on it (`concord store`): finding the
//! models whose records are damaged, and dropping one that cannot be served so that its
//! collaborators are told it is gone instead of failing on it for ever.
//!
//! The server itself never repairs or rewrites a damaged record (`docs/server.md`, "Store
//! integrity and restore"); restoring a backup keeps every other model's newer changes out,
//! so these are the operator's tools for when there is no backup, or only an old one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use concord_protocol::{CollectionId, ModelId, Timestamp};
use concord_sync::host::{Loaded, Write};

use crate::config::{ServerConfig, StoreUrl};
use crate::store::{self, DomainWrites, RedbStore, Store, StoreError};
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
    /// One of its own (record, snapshot, a recent operation, a last decision, its key): the
    /// server cannot serve it.
    Model,
    /// Only operations older than its snapshot: it is served, but the history requests that
    /// reach back to them fail.
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
        "{model} in domain {domain:?} is not damaged; delete it from a client (deleteModel) if it must go"
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
}

/// Reads every model of the store whole (what serving it needs, and every operation its
/// history holds) and reports those with a damaged record. Servers running on a PostgreSQL
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
    let store = open(location, false).await?;
    let mut damage = droppable(health(&*store, key.clone()).await?, domain, model)?;
    let store = match location.store {
        None => store,
        // Only now is PostgreSQL's writer epoch raised, so a refused drop fences nobody.
        Some(_) => {
            drop(store);
            let store = open(location, true).await?;
            damage = droppable(health(&*store, key).await?, domain, model)?;
            store
        }
    };
    let writes = vec![Write::DeleteModel { model: model.clone(), at }];
    store.commit(&[DomainWrites { domain: domain.into(), writes }]).await?;
    Ok(damage)
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
        Health::Damaged(Damage::Model, damage) => Ok(damage),
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
            let kind = match store::names_its_collection(&record) {
                true => Damage::Collection,
                false => Damage::Model,
            };
            let error = StoreError::CorruptRecord { domain, model, record };
            return Ok(Health::Damaged(kind, error.to_string()));
        }
        Err(error) => return Err(error),
    }
    // Loading read the operations after the snapshot; the history holds every one.
    let mut after = 0;
    loop {
        let page = match store.operations(&key, after, u64::MAX, PAGE).await {
            Ok(page) => page,
            Err(error @ StoreError::CorruptRecord { .. }) => {
                return Ok(Health::Damaged(Damage::History, error.to_string()));
            }
            Err(error) => return Err(error),
        };
        match page.last() {
            Some(last) if page.len() == PAGE => after = last.operation.version,
            _ => return Ok(Health::Healthy),
        }
    }
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
    let file = location.data_dir.join(store::FILE_NAME);
    if !file.try_exists().map_err(StoreError::Io)? {
        return Err(MaintenanceError::NoStore(location.data_dir.clone()));
    }
    let (dir, indexes) = (location.data_dir.clone(), location.indexes.clone());
    let store = tokio::task::spawn_blocking(move || RedbStore::open_indexed(&dir, &indexes))
        .await
        .map_err(|e| StoreError::Backend(format!("opening the store failed: {e}")))??;
    Ok(Arc::new(store))
}
