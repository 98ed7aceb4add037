//! Queries over the store: which models each collection holds, the declared indexes, and
//! the read side of `concord_sync::host::query_reply` ([`QuerySource`]) in one read
//! transaction, so that an answer sees one consistent state.
//!
//! Tables (format 5):
//! - `collection_models`: `(domain, collection, model)` → 0, every model of a collection.
//! - `index_entries`: `(domain, collection, path, key)` → model, where `key` is the model's
//!   [`IndexKey`] at `path` followed by the model id (keys are self-delimiting), so entries
//!   sort by value then by id.
//! - `model_index_keys`: `(domain, model)` → sealed [`IndexedKeys`], the entries a model has,
//!   so that a change or a deletion removes exactly them.
//! - `indexes`: `(collection, path)` → 0, the indexes built; on open the declared ones are
//!   built over every stored model and the ones no longer declared dropped.
//!
//! All three are written in the transaction of the change they follow (`Write::CreateModel`,
//! `Write::IndexModel`, `Write::DeleteModel`).

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use concord_protocol::{CollectionId, ModelId, ModelSnapshot, ServerMessage};
use concord_query::{IndexKey, IndexScan, KeyBounds, Path};
use concord_sync::host::{
    CollectionConfig, HostConfig, ModelRecord, QueryEntry, QueryLimits, QueryModelData, QueryRead,
    QuerySource, ReadFailure, query_reply,
};
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase, ReadableTable, Table, TableDefinition,
    TableHandle,
};

use super::record::{seal, unseal};
use super::{
    MODELS, OPERATIONS, RedbStore, SNAPSHOTS, StoreError, Unwound, WriteTables, backend,
    read_collection,
};

pub(super) const COLLECTION_MODELS: TableDefinition<(&str, &str, &str), u8> =
    TableDefinition::new("collection_models");
pub(super) const INDEX_ENTRIES: TableDefinition<(&str, &str, &str, &[u8]), &str> =
    TableDefinition::new("index_entries");
pub(super) const MODEL_INDEX_KEYS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("model_index_keys");
pub(super) const INDEXES: TableDefinition<(&str, &str), u8> = TableDefinition::new("indexes");

/// A model's entries in its collection's indexes: `(path, entry key)`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct IndexedKeys {
    pub(super) collection: String,
    pub(super) entries: Vec<(String, Vec<u8>)>,
}

/// The entry key of `model` with index key `key`.
pub(super) fn entry_key(key: &[u8], model: &str) -> Vec<u8> {
    let mut entry = Vec::with_capacity(key.len() + model.len());
    entry.extend_from_slice(key);
    entry.extend_from_slice(model.as_bytes());
    entry
}

/// A key of the index entries: `(domain, collection, path, encoded value and model)`.
type EntryKey = (&'static str, &'static str, &'static str, &'static [u8]);

/// The index tables one write transaction changes.
pub(super) struct IndexTables<'t> {
    pub(super) entries: Unwound<Table<'t, EntryKey, &'static str>>,
    pub(super) model_keys: Unwound<Table<'t, (&'static str, &'static str), &'static [u8]>>,
}

impl IndexTables<'_> {
    pub(super) fn open(txn: &redb::WriteTransaction) -> Result<IndexTables<'_>, StoreError> {
        Ok(IndexTables {
            entries: txn.table(INDEX_ENTRIES)?,
            model_keys: txn.table(MODEL_INDEX_KEYS)?,
        })
    }

    /// The tables in `slot`, opened there at the first call.
    pub(super) fn opened<'s, 't>(
        slot: &'s mut Option<IndexTables<'t>>,
        txn: &'t redb::WriteTransaction,
    ) -> Result<&'s mut IndexTables<'t>, StoreError> {
        if slot.is_none() {
            *slot = Some(IndexTables::open(txn)?);
        }
        Ok(slot.as_mut().expect("opened above"))
    }

    /// Replaces the index entries of `model` by `keys` (per path, its index key).
    pub(super) fn set(
        &mut self,
        domain: &str,
        model: &str,
        collection: &str,
        keys: &[(String, Vec<u8>)],
    ) -> Result<(), StoreError> {
        let mut indexed = self.remove(domain, model)?;
        indexed.collection = collection.to_owned();
        for (path, key) in keys {
            let entry = entry_key(key, model);
            let k = (domain, collection, path.as_str(), entry.as_slice());
            self.entries.insert(k, model).map_err(backend)?;
            indexed.entries.push((path.clone(), entry));
        }
        let k = (domain, model);
        let sealed = seal(MODEL_INDEX_KEYS.name(), &k, &indexed);
        self.model_keys.insert(k, sealed.as_slice()).map_err(backend)?;
        Ok(())
    }

    /// Removes every index entry of `model`; returns what it had, with no entries left.
    pub(super) fn remove(&mut self, domain: &str, model: &str) -> Result<IndexedKeys, StoreError> {
        let k = (domain, model);
        let old = self.model_keys.remove(k).map_err(backend)?.map(|v| v.value().to_vec());
        let Some(old) = old else { return Ok(IndexedKeys::default()) };
        // A damaged list cannot say which entries to remove; they then stay until the index
        // is rebuilt, and a query re-checks every model it finds anyway.
        let old: IndexedKeys = unseal(MODEL_INDEX_KEYS.name(), &k, &old).unwrap_or_default();
        for (path, entry) in &old.entries {
            let k = (domain, old.collection.as_str(), path.as_str(), entry.as_slice());
            self.entries.remove(k).map_err(backend)?;
        }
        Ok(IndexedKeys { collection: old.collection, entries: Vec::new() })
    }
}

/// A model's state: its latest snapshot and the operations after it, applied.
fn current(
    txn: &ReadTransaction,
    domain: &str,
    model: &ModelId,
) -> Result<QueryModelData, StoreError> {
    let snapshots = txn.open_table(SNAPSHOTS).map_err(backend)?;
    let operations = txn.open_table(OPERATIONS).map_err(backend)?;
    current_in(&snapshots, &operations, domain, model)
}

fn current_in(
    snapshots: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    operations: &impl ReadableTable<(&'static str, &'static str, u64), &'static [u8]>,
    domain: &str,
    model: &ModelId,
) -> Result<QueryModelData, StoreError> {
    let damaged = |record: String, damage| super::corrupt(domain, Some(model), record, damage);
    let k = (domain, model.as_str());
    let Some(bytes) = snapshots.get(k).map_err(backend)? else {
        return Err(StoreError::CorruptRecord {
            domain: domain.to_owned(),
            model: Some(model.clone()),
            record: "its snapshot is missing".into(),
        });
    };
    let snapshot: ModelSnapshot = unseal(SNAPSHOTS.name(), &k, bytes.value())
        .map_err(|damage| damaged("its snapshot".into(), damage))?;
    let range = (domain, model.as_str(), snapshot.version + 1)..=(domain, model.as_str(), u64::MAX);
    let operations = operations.range(range).map_err(backend)?.map(|entry| {
        let (key, bytes) = entry.map_err(backend)?;
        let at = key.value().2;
        unseal(OPERATIONS.name(), &key.value(), bytes.value())
            .map_err(|damage| damaged(format!("operation {at}"), damage))
    });
    super::current_state(domain, model, snapshot, operations)
}

/// Builds the declared indexes not built yet, over every stored model, and drops those no
/// longer declared; one transaction.
pub(super) fn sync_indexes(
    db: &Database,
    declared: &BTreeMap<CollectionId, Vec<Path>>,
) -> Result<(), StoreError> {
    let declared: BTreeSet<(String, String)> = declared
        .iter()
        .flat_map(|(c, paths)| paths.iter().map(|p| (c.as_str().to_owned(), p.to_string())))
        .collect();
    let built: BTreeSet<(String, String)> = {
        let txn = db.begin_read().map_err(backend)?;
        let table = txn.open_table(INDEXES).map_err(backend)?;
        let mut built = BTreeSet::new();
        for entry in table.iter().map_err(backend)? {
            let (key, _) = entry.map_err(backend)?;
            let (c, p) = key.value();
            built.insert((c.to_owned(), p.to_owned()));
        }
        built
    };
    if built == declared {
        return Ok(());
    }
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::Immediate).map_err(backend)?;
    {
        let mut indexes = txn.table(INDEXES)?;
        let mut tables = IndexTables::open(&txn)?;
        for (collection, path) in built.difference(&declared) {
            indexes.remove((collection.as_str(), path.as_str())).map_err(backend)?;
            tables
                .entries
                .retain(|k, _| !(k.1 == collection.as_str() && k.2 == path.as_str()))
                .map_err(backend)?;
            let mut rewritten = Vec::new();
            for entry in tables.model_keys.iter().map_err(backend)? {
                let (key, bytes) = entry.map_err(backend)?;
                let (domain, model) = key.value();
                let Ok(mut keys) =
                    unseal::<_, IndexedKeys>(MODEL_INDEX_KEYS.name(), &key.value(), bytes.value())
                else {
                    continue;
                };
                if keys.collection == *collection {
                    keys.entries.retain(|(p, _)| p != path);
                    rewritten.push((domain.to_owned(), model.to_owned(), keys));
                }
            }
            for (domain, model, keys) in rewritten {
                let k = (domain.as_str(), model.as_str());
                let sealed = seal(MODEL_INDEX_KEYS.name(), &k, &keys);
                tables.model_keys.insert(k, sealed.as_slice()).map_err(backend)?;
            }
        }
        let missing: Vec<&(String, String)> = declared.difference(&built).collect();
        if !missing.is_empty() {
            build(&txn, &mut tables, &missing)?;
        }
        for (collection, path) in &missing {
            indexes.insert((collection.as_str(), path.as_str()), 0).map_err(backend)?;
        }
    }
    txn.commit().map_err(backend)
}

/// Adds the entries of the indexes `missing` for every model of their collections.
fn build(
    txn: &redb::WriteTransaction,
    tables: &mut IndexTables<'_>,
    missing: &[&(String, String)],
) -> Result<(), StoreError> {
    let members = txn.table(COLLECTION_MODELS)?;
    let snapshots = txn.table(SNAPSHOTS)?;
    let operations = txn.table(OPERATIONS)?;
    let by_collection: BTreeMap<&str, Vec<Path>> =
        missing.iter().fold(BTreeMap::new(), |mut map, (collection, path)| {
            if let Ok(path) = Path::parse(path) {
                map.entry(collection.as_str()).or_insert_with(Vec::new).push(path);
            }
            map
        });
    for entry in members.iter().map_err(backend)? {
        let (key, _) = entry.map_err(backend)?;
        let (domain, collection, model) = key.value();
        let Some(paths) = by_collection.get(collection) else { continue };
        let Ok(model) = ModelId::new(model) else { continue };
        let state = match current_in(&*snapshots, &*operations, domain, &model) {
            Ok(state) => state,
            Err(error) => {
                // A damaged model stays out of the index; loading it reports the damage.
                tracing::warn!(%error, model = %model, "not indexed");
                continue;
            }
        };
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        let k = (domain, model.as_str());
        // The entries of the indexes built before stay (without their model id suffix).
        let old = tables.model_keys.get(k).map_err(backend)?.map(|bytes| bytes.value().to_vec());
        if let Some(Ok(old)) =
            old.map(|bytes| unseal::<_, IndexedKeys>(MODEL_INDEX_KEYS.name(), &k, &bytes))
        {
            let model_len = model.as_str().len();
            keys.extend(old.entries.into_iter().map(|(p, entry)| {
                let key = entry[..entry.len().saturating_sub(model_len)].to_vec();
                (p, key)
            }));
        }
        for path in paths {
            keys.push((path.to_string(), IndexKey::encode(path.lookup_data(&state.data))));
        }
        tables.set(domain, model.as_str(), collection, &keys)?;
    }
    Ok(())
}

/// The entries of the model-membership table for a store migrated from format 4.
pub(super) fn fill_collection_models(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let models = txn.table(MODELS)?;
    let mut members = txn.table(COLLECTION_MODELS)?;
    for entry in models.iter().map_err(backend)? {
        let (key, bytes) = entry.map_err(backend)?;
        // A damaged record stays reported by its model; it has no known collection.
        if let Ok(record) = unseal::<_, ModelRecord>(MODELS.name(), &key.value(), bytes.value()) {
            let (domain, model) = key.value();
            members.insert((domain, record.collection.as_str(), model), 0).map_err(backend)?;
        }
    }
    Ok(())
}

impl RedbStore {
    /// The answer to a query the session host accepted, in `domain`.
    pub(crate) fn query(
        &self,
        domain: &str,
        read: &QueryRead,
        config: &HostConfig,
        limits: &QueryLimits,
    ) -> ServerMessage {
        let mut source = StoredQuery { txn: self.begin_read(), domain };
        query_reply(read, config, limits, &mut source)
    }
}

struct StoredQuery<'a> {
    txn: Result<ReadTransaction, StoreError>,
    domain: &'a str,
}

struct StoredEntry<'a> {
    txn: &'a ReadTransaction,
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
        current(self.txn, self.domain, &self.model).map_err(ReadFailure::from)
    }
}

fn as_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// The first entry key past every entry whose index key is `key` (entry keys are the index
/// key then the model id, which never holds 0xFF).
fn past(key: &[u8]) -> Vec<u8> {
    let mut end = key.to_vec();
    end.push(0xFF);
    end
}

impl QuerySource for StoredQuery<'_> {
    fn collection(
        &mut self,
        collection: &CollectionId,
    ) -> Result<Option<CollectionConfig>, ReadFailure> {
        let txn = self.txn.as_ref().map_err(ReadFailure::from)?;
        read_collection(txn, self.domain, collection).map_err(ReadFailure::from)
    }

    fn model(&mut self, model: &ModelId) -> Result<QueryModelData, ReadFailure> {
        let txn = self.txn.as_ref().map_err(ReadFailure::from)?;
        current(txn, self.domain, model).map_err(ReadFailure::from)
    }

    fn scan(
        &mut self,
        collection: &CollectionId,
        index: Option<&IndexScan>,
        visit: &mut dyn FnMut(&mut dyn QueryEntry) -> Result<bool, ReadFailure>,
    ) -> Result<(), ReadFailure> {
        let txn = self.txn.as_ref().map_err(ReadFailure::from)?;
        let domain = self.domain;
        let text = ReadFailure::from;
        let models = txn.open_table(MODELS).map_err(|e| text(backend(e)))?;
        let mut offer = |model: &str| -> Result<bool, ReadFailure> {
            let k = (domain, model);
            let Some(bytes) = models.get(k).map_err(|e| text(backend(e)))? else {
                return Ok(true);
            };
            let record: ModelRecord = unseal(MODELS.name(), &k, bytes.value()).map_err(|d| {
                super::corrupt(domain, ModelId::new(model).ok().as_ref(), "its record".into(), d)
            })?;
            let model = ModelId::new(model).map_err(|e| ReadFailure::internal(e.to_string()))?;
            visit(&mut StoredEntry { txn, domain, model, record })
        };
        let c = collection.as_str();
        match index {
            None => {
                let members = txn.open_table(COLLECTION_MODELS).map_err(|e| text(backend(e)))?;
                // Every member of `c` sorts before the first of the collection `c\0`.
                let next = format!("{c}\0");
                let range = (domain, c, "")..(domain, next.as_str(), "");
                for entry in members.range(range).map_err(|e| text(backend(e)))? {
                    let (key, _) = entry.map_err(|e| text(backend(e)))?;
                    if !offer(key.value().2)? {
                        break;
                    }
                }
            }
            Some(scan) => {
                let entries = txn.open_table(INDEX_ENTRIES).map_err(|e| text(backend(e)))?;
                let path = scan.path.to_string();
                let p = path.as_str();
                let (lower, upper) = match &scan.bounds {
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
                let empty: &[u8] = &[];
                let start = match as_ref(&lower) {
                    Bound::Included(k) => Bound::Included((domain, c, p, k)),
                    Bound::Excluded(k) => Bound::Excluded((domain, c, p, k)),
                    Bound::Unbounded => Bound::Included((domain, c, p, empty)),
                };
                let everything: &[u8] = &[0xFF];
                let end = match as_ref(&upper) {
                    Bound::Included(k) => Bound::Included((domain, c, p, k)),
                    Bound::Excluded(k) => Bound::Excluded((domain, c, p, k)),
                    // Every index key starts with a tag below 0xFF.
                    Bound::Unbounded => Bound::Excluded((domain, c, p, everything)),
                };
                let range = entries.range::<(&str, &str, &str, &[u8])>((start, end));
                let range = range.map_err(|e| text(backend(e)))?;
                let ascending = scan.direction == concord_query::Direction::Ascending;
                let mut walk = |entry: Result<_, redb::StorageError>| -> Result<bool, ReadFailure> {
                    let (_, model): (_, redb::AccessGuard<'_, &str>) =
                        entry.map_err(|e| text(backend(e)))?;
                    offer(model.value())
                };
                if ascending {
                    for entry in range {
                        if !walk(entry)? {
                            break;
                        }
                    }
                } else {
                    for entry in range.rev() {
                        if !walk(entry)? {
                            break;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
