//! The store's logic, shared by every byte-keyed backend: reads, batch application with
//! its checks, and opening (format version, store key, migrations).
//!
//! A backend provides a transactional key-value view ([`KvRead`], [`KvWrite`]); this module
//! never sees a file or a lock. A write view must be all or nothing: the backend discards
//! it when a function here returns an error.

use std::collections::{BTreeMap, BTreeSet};

use concord_ot::ReplicaId;
use concord_protocol::{CommittedOperation, Identity, ModelId, SessionId, User, UserId};

use crate::batch::{Batch, Mutation};
use crate::encoding::{
    self, FORMAT_VERSION, META_FORMAT, META_REPLICA_ID, META_STORE_KEY, Table, decode, encode,
    model_key, numbered_key, numbered_range,
};
use crate::error::StorageError;
use crate::records::{
    CreationRecord, IdentityCache, ModelState, ModelSummary, PendingOperation, Snapshot, StoreKey,
    Unsynced,
};

/// Visits one key and value; an error stops the scan.
pub(crate) type Visit<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<(), StorageError>;

/// A consistent read view of a store's tables.
pub(crate) trait KvRead {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Visits the rows with keys in `[start, end)` (all rows if `range` is `None`), in key
    /// order.
    fn scan(
        &self,
        table: Table,
        range: Option<(&[u8], &[u8])>,
        visit: Visit<'_>,
    ) -> Result<(), StorageError>;
}

/// A write transaction over a store's tables.
pub(crate) trait KvWrite: KvRead {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StorageError>;
    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StorageError>;
    /// Deletes the rows with keys in `[start, end)`; returns how many there were.
    fn delete_range(&mut self, table: Table, start: &[u8], end: &[u8])
    -> Result<u64, StorageError>;
    fn clear(&mut self, table: Table) -> Result<(), StorageError>;
}

/// A step that brings a store from format `from` to `from + 1`, inside the opening
/// transaction.
#[derive(Clone, Copy)]
pub(crate) struct Migration {
    pub(crate) from: u32,
    pub(crate) run: fn(&mut dyn KvWrite) -> Result<(), StorageError>,
}

impl std::fmt::Debug for Migration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Migration({} -> {})", self.from, self.from + 1)
    }
}

/// The migrations of the shipped formats, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[
    // Format 2 adds the `identities` table, empty in a migrated store.
    Migration { from: 1, run: |_| Ok(()) },
];

/// Which format a store has, and what opening it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opened {
    Created,
    Current,
    Migrated { from: u32 },
}

/// Reads the store's format version without changing anything; `None` for a store that
/// was never initialised.
pub(crate) fn format_version(kv: &dyn KvRead) -> Result<Option<u32>, StorageError> {
    kv.get(Table::Meta, META_FORMAT)?.map(|bytes| encoding::decode_format(&bytes)).transpose()
}

/// Initialises a new store, or checks an existing one and migrates it to `supported`.
/// On error the caller discards the transaction, so nothing changes.
pub(crate) fn prepare(
    kv: &mut dyn KvWrite,
    key: &StoreKey,
    supported: u32,
    migrations: &[Migration],
) -> Result<Opened, StorageError> {
    let Some(found) = format_version(kv)? else {
        let mut empty = true;
        for table in Table::ALL {
            kv.scan(table, None, &mut |_, _| {
                empty = false;
                Ok(())
            })?;
        }
        if !empty {
            return Err(StorageError::Corrupt("store has data but no format version".into()));
        }
        kv.put(Table::Meta, META_FORMAT, &encoding::encode_format(supported))?;
        kv.put(Table::Meta, META_STORE_KEY, &encode(key)?)?;
        return Ok(Opened::Created);
    };
    if found > supported {
        return Err(StorageError::NewerFormat { found, supported });
    }
    let stored: StoreKey = match kv.get(Table::Meta, META_STORE_KEY)? {
        Some(bytes) => decode(&bytes)?,
        None => return Err(StorageError::Corrupt("store key is missing".into())),
    };
    if stored != *key {
        return Err(StorageError::WrongStore { expected: key.clone(), found: stored });
    }
    if found == supported {
        return Ok(Opened::Current);
    }
    if found == 0 {
        return Err(StorageError::Corrupt("format version 0".into()));
    }
    for version in found..supported {
        let migration = migrations.iter().find(|m| m.from == version).ok_or_else(|| {
            StorageError::Corrupt(format!("no migration from format version {version}"))
        })?;
        (migration.run)(kv)?;
    }
    kv.put(Table::Meta, META_FORMAT, &encoding::encode_format(supported))?;
    Ok(Opened::Migrated { from: found })
}

/// Opens with the shipped format and migrations.
pub(crate) fn prepare_current(
    kv: &mut dyn KvWrite,
    key: &StoreKey,
) -> Result<Opened, StorageError> {
    prepare(kv, key, FORMAT_VERSION, MIGRATIONS)
}

// Reads.

pub(crate) fn models(kv: &dyn KvRead) -> Result<Vec<ModelSummary>, StorageError> {
    let mut out = Vec::new();
    kv.scan(Table::Models, None, &mut |_, value| {
        out.push(decode(value)?);
        Ok(())
    })?;
    Ok(out)
}

pub(crate) fn unsynced(kv: &dyn KvRead) -> Result<Unsynced, StorageError> {
    let mut out = Unsynced::default();
    kv.scan(Table::Models, None, &mut |_, value| {
        let summary: ModelSummary = decode(value)?;
        let record = summary.record;
        if record.deleted_locally {
            out.deleted.push((record.id, record.collection));
        } else if summary.pending_count > 0 || record.created_locally {
            out.changed.push(record.id);
        }
        Ok(())
    })?;
    Ok(out)
}

fn scan_numbered<T: serde::de::DeserializeOwned>(
    kv: &dyn KvRead,
    table: Table,
    model: &ModelId,
) -> Result<Vec<(u64, T)>, StorageError> {
    let (start, end) = numbered_range(model, None);
    let mut out = Vec::new();
    kv.scan(table, Some((&start, &end)), &mut |key, value| {
        out.push((encoding::key_number(key)?, decode(value)?));
        Ok(())
    })?;
    Ok(out)
}

pub(crate) fn load_model(
    kv: &dyn KvRead,
    model: &ModelId,
) -> Result<Option<ModelState>, StorageError> {
    let Some(bytes) = kv.get(Table::Models, model_key(model))? else {
        return Ok(None);
    };
    let summary: ModelSummary = decode(&bytes)?;
    let snapshot: Option<Snapshot> =
        kv.get(Table::Snapshots, model_key(model))?.map(|b| decode(&b)).transpose()?;
    let server_operations: Vec<CommittedOperation> =
        scan_numbered::<CommittedOperation>(kv, Table::ServerOperations, model)?
            .into_iter()
            .map(|(_, op)| op)
            .collect();
    let pending: Vec<PendingOperation> =
        scan_numbered::<PendingOperation>(kv, Table::Pending, model)?
            .into_iter()
            .map(|(_, op)| op)
            .collect();
    let creation: Option<CreationRecord> =
        kv.get(Table::Creations, model_key(model))?.map(|b| decode(&b)).transpose()?;
    // The summary is kept in step with the rows by `apply`; disagreement is damage.
    let expected_ops = match (summary.snapshot_version, summary.confirmed_version) {
        (Some(s), Some(c)) => c.checked_sub(s),
        (None, None) => Some(0),
        _ => None,
    };
    let consistent = snapshot.as_ref().map(|s| s.version) == summary.snapshot_version
        && expected_ops == Some(server_operations.len() as u64)
        && server_operations
            .iter()
            .zip(summary.snapshot_version.unwrap_or(0) + 1..)
            .all(|(op, v)| op.version == v)
        && summary.pending_count == pending.len() as u64
        && summary.has_creation == creation.is_some();
    if !consistent {
        return Err(StorageError::Corrupt(format!(
            "model {model}: its summary does not match its rows"
        )));
    }
    Ok(Some(ModelState { summary, snapshot, server_operations, pending, creation }))
}

pub(crate) fn subscriptions(kv: &dyn KvRead) -> Result<BTreeSet<ModelId>, StorageError> {
    let mut out = BTreeSet::new();
    kv.scan(Table::Subscriptions, None, &mut |key, _| {
        let id = ModelId::new(encoding::key_str(key)?)
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        out.insert(id);
        Ok(())
    })?;
    Ok(out)
}

pub(crate) fn replica_id(kv: &dyn KvRead) -> Result<Option<ReplicaId>, StorageError> {
    kv.get(Table::Meta, META_REPLICA_ID)?.map(|b| decode(&b)).transpose()
}

pub(crate) fn identities(kv: &dyn KvRead) -> Result<IdentityCache, StorageError> {
    let mut cache = IdentityCache::default();
    kv.scan(Table::Sessions, None, &mut |key, value| {
        let session = SessionId(encoding::key_str(key)?.to_owned());
        cache.sessions.insert(session, decode(value)?);
        Ok(())
    })?;
    kv.scan(Table::Users, None, &mut |_, value| {
        let user: User = decode(value)?;
        cache.users.insert(user.id.clone(), user);
        Ok(())
    })?;
    kv.scan(Table::Identities, None, &mut |_, value| {
        let identity: Identity = decode(value)?;
        cache.identities.insert(identity.user.clone(), identity);
        Ok(())
    })?;
    Ok(cache)
}

// Writes.

/// Why one mutation failed: the caller's mistake, or the store's.
enum Failure {
    Invalid(String),
    Storage(StorageError),
}

impl From<StorageError> for Failure {
    fn from(error: StorageError) -> Failure {
        Failure::Storage(error)
    }
}

fn invalid<T>(reason: impl Into<String>) -> Result<T, Failure> {
    Err(Failure::Invalid(reason.into()))
}

/// Model summaries read and changed during one group, written back at its end.
struct Summaries {
    cache: BTreeMap<ModelId, Option<ModelSummary>>,
}

impl Summaries {
    fn get(
        &mut self,
        kv: &dyn KvWrite,
        model: &ModelId,
    ) -> Result<Option<&mut ModelSummary>, StorageError> {
        if !self.cache.contains_key(model) {
            let stored =
                kv.get(Table::Models, model_key(model))?.map(|b| decode(&b)).transpose()?;
            self.cache.insert(model.clone(), stored);
        }
        Ok(self.cache.get_mut(model).and_then(Option::as_mut))
    }

    fn require(&mut self, kv: &dyn KvWrite, model: &ModelId) -> Result<&mut ModelSummary, Failure> {
        match self.get(kv, model)? {
            Some(summary) => Ok(summary),
            None => invalid(format!("model {model} has no record")),
        }
    }

    fn flush(self, kv: &mut dyn KvWrite) -> Result<(), StorageError> {
        for (model, summary) in self.cache {
            match summary {
                Some(summary) => kv.put(Table::Models, model_key(&model), &encode(&summary)?)?,
                None => kv.delete(Table::Models, model_key(&model))?,
            }
        }
        Ok(())
    }
}

/// Applies `batches` in order. On error the caller discards the whole transaction.
pub(crate) fn apply(kv: &mut dyn KvWrite, batches: &[Batch]) -> Result<(), StorageError> {
    let mut summaries = Summaries { cache: BTreeMap::new() };
    for (b, batch) in batches.iter().enumerate() {
        for (m, mutation) in batch.mutations.iter().enumerate() {
            match apply_one(kv, &mut summaries, mutation) {
                Ok(()) => {}
                Err(Failure::Storage(error)) => return Err(error),
                Err(Failure::Invalid(reason)) => {
                    return Err(StorageError::InvalidBatch { batch: b, mutation: m, reason });
                }
            }
        }
    }
    summaries.flush(kv)
}

fn check_increasing(operations: &[PendingOperation], after: Option<u64>) -> Result<(), Failure> {
    let mut last = after;
    for op in operations {
        if last.is_some_and(|last| op.seq <= last) {
            return invalid(format!(
                "pending seq {} does not follow {}",
                op.seq,
                last.unwrap_or_default()
            ));
        }
        last = Some(op.seq);
    }
    Ok(())
}

fn put_pending(
    kv: &mut dyn KvWrite,
    model: &ModelId,
    operations: &[PendingOperation],
) -> Result<(), StorageError> {
    for op in operations {
        kv.put(Table::Pending, &numbered_key(model, op.seq), &encode(op)?)?;
    }
    Ok(())
}

fn delete_numbered(
    kv: &mut dyn KvWrite,
    table: Table,
    model: &ModelId,
    through: Option<u64>,
) -> Result<u64, StorageError> {
    let (start, end) = numbered_range(model, through);
    kv.delete_range(table, &start, &end)
}

fn apply_one(
    kv: &mut dyn KvWrite,
    summaries: &mut Summaries,
    mutation: &Mutation,
) -> Result<(), Failure> {
    match mutation {
        Mutation::PutModel(record) => match summaries.get(kv, &record.id)? {
            Some(summary) => {
                let counter = summary.record.next_element_counter.max(record.next_element_counter);
                summary.record = record.clone();
                summary.record.next_element_counter = counter;
            }
            None => {
                summaries.cache.insert(
                    record.id.clone(),
                    Some(ModelSummary {
                        record: record.clone(),
                        snapshot_version: None,
                        confirmed_version: None,
                        pending_count: 0,
                        last_pending_seq: None,
                        in_flight_through: None,
                        has_creation: false,
                    }),
                );
            }
        },
        Mutation::DeleteModel(model) => {
            if summaries.get(kv, model)?.is_some() {
                kv.delete(Table::Snapshots, model_key(model))?;
                delete_numbered(kv, Table::ServerOperations, model, None)?;
                delete_numbered(kv, Table::Pending, model, None)?;
                kv.delete(Table::Creations, model_key(model))?;
                summaries.cache.insert(model.clone(), None);
            }
        }
        Mutation::PutSnapshot { model, snapshot } => {
            let summary = summaries.require(kv, model)?;
            let v = snapshot.version;
            let operations_above = summary.confirmed_version > summary.snapshot_version;
            if operations_above && summary.snapshot_version.is_some_and(|old| v < old) {
                return invalid(format!(
                    "snapshot at version {v} would leave a gap before the stored operations \
                     after version {}",
                    summary.snapshot_version.unwrap_or_default()
                ));
            }
            summary.snapshot_version = Some(v);
            summary.confirmed_version = Some(match summary.confirmed_version {
                Some(c) if operations_above && c > v => c,
                _ => v,
            });
            kv.put(Table::Snapshots, model_key(model), &encode(snapshot)?)?;
            delete_numbered(kv, Table::ServerOperations, model, Some(v))?;
        }
        Mutation::AppendServerOperations { model, operations } => {
            let summary = summaries.require(kv, model)?;
            let Some(mut confirmed) = summary.confirmed_version else {
                if operations.is_empty() {
                    return Ok(());
                }
                return invalid(format!("model {model} has no snapshot to append to"));
            };
            for op in operations {
                if Some(op.version) != confirmed.checked_add(1) {
                    return invalid(format!(
                        "server operation version {} does not follow {confirmed}",
                        op.version
                    ));
                }
                confirmed = op.version;
            }
            summary.confirmed_version = Some(confirmed);
            for op in operations {
                kv.put(Table::ServerOperations, &numbered_key(model, op.version), &encode(op)?)?;
            }
        }
        Mutation::ReplacePending { model, operations } => {
            let summary = summaries.require(kv, model)?;
            check_increasing(operations, None)?;
            summary.pending_count = operations.len() as u64;
            if let Some(last) = operations.last() {
                summary.last_pending_seq = summary.last_pending_seq.max(Some(last.seq));
            }
            delete_numbered(kv, Table::Pending, model, None)?;
            put_pending(kv, model, operations)?;
        }
        Mutation::UpdatePending { model, operations } => {
            summaries.require(kv, model)?;
            check_increasing(operations, None)?;
            for op in operations {
                if kv.get(Table::Pending, &numbered_key(model, op.seq))?.is_none() {
                    return invalid(format!(
                        "pending operation {} of model {model} is not stored",
                        op.seq
                    ));
                }
            }
            put_pending(kv, model, operations)?;
        }
        Mutation::AppendPending { model, operations } => {
            let summary = summaries.require(kv, model)?;
            check_increasing(operations, summary.last_pending_seq)?;
            summary.pending_count += operations.len() as u64;
            if let Some(last) = operations.last() {
                summary.last_pending_seq = Some(last.seq);
            }
            put_pending(kv, model, operations)?;
        }
        Mutation::RemovePendingThrough { model, through_seq } => {
            summaries.require(kv, model)?;
            let removed = delete_numbered(kv, Table::Pending, model, Some(*through_seq))?;
            let summary = summaries.require(kv, model)?;
            summary.pending_count =
                summary.pending_count.checked_sub(removed).ok_or_else(|| {
                    StorageError::Corrupt(format!("model {model}: pending count below zero"))
                })?;
        }
        Mutation::SetInFlight { model, through_seq } => {
            summaries.require(kv, model)?.in_flight_through = *through_seq;
        }
        Mutation::PutCreation { model, creation } => {
            summaries.require(kv, model)?.has_creation = true;
            kv.put(Table::Creations, model_key(model), &encode(creation)?)?;
        }
        Mutation::DeleteCreation(model) => {
            summaries.require(kv, model)?.has_creation = false;
            kv.delete(Table::Creations, model_key(model))?;
        }
        Mutation::AdvanceElementCounter { model, next } => {
            let record = &mut summaries.require(kv, model)?.record;
            record.next_element_counter = record.next_element_counter.max(*next);
        }
        Mutation::SetSubscriptions(models) => {
            kv.clear(Table::Subscriptions)?;
            for model in models {
                kv.put(Table::Subscriptions, model_key(model), &[])?;
            }
        }
        Mutation::Subscribe(models) => {
            for model in models {
                kv.put(Table::Subscriptions, model_key(model), &[])?;
            }
        }
        Mutation::Unsubscribe(models) => {
            for model in models {
                kv.delete(Table::Subscriptions, model_key(model))?;
            }
        }
        Mutation::PutSessions(sessions) => {
            for (session, user) in sessions {
                kv.put(Table::Sessions, session.0.as_bytes(), &encode::<UserId>(user)?)?;
            }
        }
        Mutation::RemoveSessions(sessions) => {
            for session in sessions {
                kv.delete(Table::Sessions, session.0.as_bytes())?;
            }
        }
        Mutation::PutUsers(users) => {
            for user in users {
                kv.put(Table::Users, user.id.0.as_bytes(), &encode(user)?)?;
            }
        }
        Mutation::PutIdentities(identities) => {
            for identity in identities {
                kv.put(Table::Identities, identity.user.0.as_bytes(), &encode(identity)?)?;
            }
        }
        Mutation::SetReplicaId(replica) => match replica_id(kv)? {
            Some(stored) if stored != *replica => {
                return invalid(format!(
                    "the replica id is already {}, not {}",
                    stored.0, replica.0
                ));
            }
            Some(_) => {}
            None => kv.put(Table::Meta, META_REPLICA_ID, &encode(replica)?)?,
        },
    }
    Ok(())
}
