//! The store's logic, shared by every byte-keyed backend: reads, batch application with
//! its checks, and opening (format version, store key, migrations).
//!
//! A backend provides a transactional key-value view ([`KvRead`], [`KvWrite`]); this module
//! never sees a file or a lock. A write view must be all or nothing: the backend discards
//! it when a function here returns an error.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use concord_ot::ReplicaId;
use concord_protocol::{CommittedOperation, Identity, ModelId, SessionId, User, UserId};

use crate::adapter::{MaybeSendSync, OfflineStore};
use crate::batch::{Batch, Mutation};
use crate::encoding::{
    self, FORMAT_VERSION, META_FORMAT, META_REPLICA_ID, META_STORE_KEY, Table, decode, encode,
    model_key, numbered_key, numbered_range,
};
use crate::error::StorageError;
use crate::records::{
    CreationRecord, IdentityCache, ModelState, ModelSummary, PendingOperation, Snapshot, StoreKey,
    Tombstone, Unsynced,
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

/// A backend that reads and writes its tables in place, through a view this module works
/// on: every such backend is an [`OfflineStore`] by the one implementation below.
pub(crate) trait KvStore: MaybeSendSync + std::fmt::Debug {
    /// The key the store was opened for.
    fn store_key(&self) -> &StoreKey;

    /// Runs `f` over one consistent read view.
    fn read<T>(
        &self,
        f: impl FnOnce(&dyn KvRead) -> Result<T, StorageError>,
    ) -> Result<T, StorageError>;

    /// Runs `f` in one write transaction, as durable as the backend keeps anything: kept if
    /// `f` succeeds, discarded if not.
    fn write<T>(
        &self,
        f: impl FnOnce(&mut dyn KvWrite) -> Result<T, StorageError>,
    ) -> Result<T, StorageError>;
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<S: KvStore> OfflineStore for S {
    fn key(&self) -> &StoreKey {
        self.store_key()
    }

    async fn models(&self) -> Result<Vec<ModelSummary>, StorageError> {
        self.read(models)
    }

    async fn unsynced(&self) -> Result<Unsynced, StorageError> {
        self.read(unsynced)
    }

    async fn load_model(&self, model: &ModelId) -> Result<Option<ModelState>, StorageError> {
        self.read(|kv| load_model(kv, model))
    }

    async fn load_model_head(&self, model: &ModelId) -> Result<Option<ModelState>, StorageError> {
        self.read(|kv| load_model_head(kv, model))
    }

    async fn pending_page(
        &self,
        model: &ModelId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<PendingOperation>, StorageError> {
        self.read(|kv| pending_page(kv, model, after, None, limit))
    }

    async fn subscriptions(&self) -> Result<BTreeSet<ModelId>, StorageError> {
        self.read(subscriptions)
    }

    async fn replica_id(&self) -> Result<Option<ReplicaId>, StorageError> {
        self.read(replica_id)
    }

    async fn identities(&self) -> Result<IdentityCache, StorageError> {
        self.read(identities)
    }

    async fn commit_group(&self, batches: Vec<Batch>) -> Result<(), StorageError> {
        if batches.is_empty() {
            return Ok(());
        }
        self.write(|kv| apply(kv, &batches))
    }
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
    // Format 3 stores a pending run as one record that names its last seq; a format 2
    // record is one change.
    Migration { from: 2, run: migrate_pending_to_runs },
];

/// A pending record of formats 1 and 2: one change.
#[derive(serde::Deserialize)]
struct PendingV2 {
    seq: u64,
    operation: concord_ot::Operation,
}

fn migrate_pending_to_runs(kv: &mut dyn KvWrite) -> Result<(), StorageError> {
    let mut rows = Vec::new();
    kv.scan(Table::Pending, None, &mut |key, value| {
        let old: PendingV2 = decode(value)?;
        if encoding::key_number(key)? != old.seq {
            return Err(StorageError::Corrupt("a pending record's seq is not its key's".into()));
        }
        rows.push((key.to_vec(), encode(&PendingOperation::new(old.seq, old.operation))?));
        Ok(())
    })?;
    for (key, value) in rows {
        kv.put(Table::Pending, &key, &value)?;
    }
    Ok(())
}

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
    // Tombstones whose creation record is kept: its nonce is read after the scan.
    let mut with_creation = Vec::new();
    kv.scan(Table::Models, None, &mut |_, value| {
        let summary: ModelSummary = decode(value)?;
        let record = summary.record;
        if record.deleted_locally {
            if summary.has_creation {
                with_creation.push(out.deleted.len());
            }
            let (model, collection) = (record.id, record.collection);
            out.deleted.push(Tombstone { model, collection, creation: None });
        } else if summary.pending_count > 0 || record.created_locally {
            out.changed.push(record.id);
        }
        Ok(())
    })?;
    for index in with_creation {
        let tombstone = &mut out.deleted[index];
        let creation: Option<CreationRecord> = kv
            .get(Table::Creations, model_key(&tombstone.model))?
            .map(|b| decode(&b))
            .transpose()?;
        tombstone.creation = creation.map(|c| c.nonce);
    }
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
    let Some(mut state) = load_model_head(kv, model)? else {
        return Ok(None);
    };
    state.pending = scan_numbered::<PendingOperation>(kv, Table::Pending, model)?
        .into_iter()
        .map(|(_, op)| op)
        .collect();
    let pending_seqs: u64 = state.pending.iter().map(PendingOperation::seqs).sum();
    if state.summary.pending_count != pending_seqs {
        return Err(damaged(model));
    }
    Ok(Some(state))
}

/// What [`load_model_head`] reads: a model without its pending operations.
pub(crate) fn load_model_head(
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
        && summary.has_creation == creation.is_some();
    if !consistent {
        return Err(damaged(model));
    }
    Ok(Some(ModelState { summary, snapshot, server_operations, pending: Vec::new(), creation }))
}

fn damaged(model: &ModelId) -> StorageError {
    StorageError::Corrupt(format!("model {model}: its summary does not match its rows"))
}

/// At most `limit` (at least one) of a model's pending records whose first seq is above
/// `after` (and at most `through`, if given), in seq order.
pub(crate) fn pending_page(
    kv: &dyn KvRead,
    model: &ModelId,
    after: Option<u64>,
    through: Option<u64>,
    limit: usize,
) -> Result<Vec<PendingOperation>, StorageError> {
    let (start, end) = pending_page_range(model, after, through);
    let mut out = Vec::new();
    if start >= end {
        return Ok(out);
    }
    let limit = limit.max(1);
    let scanned = kv.scan(Table::Pending, Some((&start, &end)), &mut |key, value| {
        if out.len() == limit {
            return Err(StorageError::Backend(PAGE_FULL.into()));
        }
        out.push(decode_pending(model, key, value)?);
        Ok(())
    });
    match scanned {
        Err(StorageError::Backend(reason)) if reason == PAGE_FULL => Ok(out),
        other => other.map(|()| out),
    }
}

/// One stored pending record, checked against its key.
pub(crate) fn decode_pending(
    model: &ModelId,
    key: &[u8],
    value: &[u8],
) -> Result<PendingOperation, StorageError> {
    let op: PendingOperation = decode(value)?;
    if encoding::key_number(key)? != op.seq || op.through < op.seq {
        return Err(StorageError::Corrupt(format!(
            "model {model}: pending record {} does not match its key",
            op.seq
        )));
    }
    Ok(op)
}

/// Ends a page's scan once it is full (never leaves [`pending_page`]).
const PAGE_FULL: &str = "\0pending page full";

/// The keys `[start, end)` of a model's pending records with first seq in
/// `after < seq <= through`.
pub(crate) fn pending_page_range(
    model: &ModelId,
    after: Option<u64>,
    through: Option<u64>,
) -> (Vec<u8>, Vec<u8>) {
    let (start, end) = numbered_range(model, through);
    match after {
        None => (start, end),
        Some(u64::MAX) => (end.clone(), end),
        Some(seq) => (numbered_key(model, seq + 1), end),
    }
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
        if op.through < op.seq {
            return invalid(format!("pending run {}..={} is empty", op.seq, op.through));
        }
        if last.is_some_and(|last| op.seq <= last) {
            return invalid(format!(
                "pending seq {} does not follow {}",
                op.seq,
                last.unwrap_or_default()
            ));
        }
        last = Some(op.through);
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

/// The stored pending records with first seq in `from..=through` (all up to `through` if
/// `from` is `None`), as (first seq, last seq), in order.
fn stored_runs(
    kv: &dyn KvWrite,
    model: &ModelId,
    from: Option<u64>,
    through: u64,
) -> Result<Vec<(u64, u64)>, StorageError> {
    let (mut start, end) = numbered_range(model, Some(through));
    if let Some(from) = from {
        start = numbered_key(model, from);
    }
    let mut out = Vec::new();
    if start >= end {
        return Ok(out);
    }
    kv.scan(Table::Pending, Some((&start, &end)), &mut |key, value| {
        let op = decode_pending(model, key, value)?;
        out.push((op.seq, op.through));
        Ok(())
    })?;
    Ok(out)
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
            summary.pending_count = operations.iter().map(PendingOperation::seqs).sum();
            if let Some(last) = operations.last() {
                summary.last_pending_seq = summary.last_pending_seq.max(Some(last.through));
            }
            delete_numbered(kv, Table::Pending, model, None)?;
            put_pending(kv, model, operations)?;
        }
        Mutation::UpdatePending { model, operations } => {
            summaries.require(kv, model)?;
            check_increasing(operations, None)?;
            for op in operations {
                // Exactly the stored records of `seq..=through`, without a gap.
                let stored = stored_runs(kv, model, Some(op.seq), op.through)?;
                let mut next = op.seq;
                for &(first, last) in &stored {
                    if first != next {
                        return invalid(format!(
                            "pending operation {next} of model {model} is not stored"
                        ));
                    }
                    next = last.saturating_add(1);
                }
                if stored.is_empty() || next != op.through.saturating_add(1) {
                    return invalid(format!(
                        "pending run {}..={} of model {model} does not match the stored ones",
                        op.seq, op.through
                    ));
                }
                for (first, _) in stored {
                    kv.delete(Table::Pending, &numbered_key(model, first))?;
                }
            }
            put_pending(kv, model, operations)?;
        }
        Mutation::AppendPending { model, operations } => {
            let summary = summaries.require(kv, model)?;
            check_increasing(operations, summary.last_pending_seq)?;
            summary.pending_count += operations.iter().map(PendingOperation::seqs).sum::<u64>();
            if let Some(last) = operations.last() {
                summary.last_pending_seq = Some(last.through);
            }
            put_pending(kv, model, operations)?;
        }
        Mutation::RemovePendingThrough { model, through_seq } => {
            summaries.require(kv, model)?;
            let stored = stored_runs(kv, model, None, *through_seq)?;
            if let Some(&(first, last)) = stored.last()
                && last > *through_seq
            {
                return invalid(format!(
                    "pending run {first}..={last} of model {model} reaches past {through_seq}"
                ));
            }
            let removed: u64 = stored.iter().map(|&(first, last)| last + 1 - first).sum();
            delete_numbered(kv, Table::Pending, model, Some(*through_seq))?;
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
