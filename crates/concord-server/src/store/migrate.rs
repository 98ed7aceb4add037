//! Brings a store of an older format to the current one, in one transaction: a crash midway
//! leaves the old format, which the next open migrates again.
//!
//! Format 1 → 2: every record gains its checksum (`record::seal`), the replicas' last commits
//! move from a plain tuple table (`replicas`) to a checksummed one (`last_commits`), and the
//! replica owners table is added.
//!
//! Format 2 → 3: a replica's last decision may be a refusal, so `last_commits` (sealed
//! `(seq, version, timestamp)`) becomes `last_decisions` (sealed `(seq, StoredDecision)`),
//! every commit carried over as a committed decision. A record that fails its checksum is
//! carried over as it is, so that it stays reported as damaged (by its model) rather than
//! stop the migration of everything else.
//!
//! Format 3 → 4: histories are kept. Every model's latest snapshot becomes its first
//! checkpoint (its history starts there: the operations before it cannot be rebuilt without
//! the model as created, which format 3 replaced; a model never snapshotted since its
//! creation keeps its whole history). Operations committed before carry no user. A
//! snapshot that fails its checksum gets no checkpoint (it stays reported as damaged).
//!
//! Format 4 → 5: each collection's models are listed (`collection_models`), and indexes
//! are kept (empty until declared: `RedbStore::open_indexed` builds them after migrating).
//!
//! Format 5 → 6: the identities table is added (`create_tables`).
//!
//! Format 6 → 7: commits are made durable by a log beside the store (`wal`); the store
//! gets the id its log records are checked against. Nothing else changes.
//!
//! An older store takes every step, in the same transaction. Tables are rewritten a chunk
//! at a time, so that a large store never sits in memory whole.

use std::ops::Bound;

use redb::{ReadableTable, TableDefinition, TableHandle, WriteTransaction};

use super::record::{seal, seal_bytes, unseal};
use super::{
    CHECKPOINTS, COLLECTIONS, Database, Durability, FORMAT_VERSION, LAST_DECISIONS, META, MODELS,
    OPERATIONS, SNAPSHOTS, StoreError, StoredDecision, USERS, WriteTables, backend, create_tables,
};

/// Format 1's last commit per replica: `(domain, model, replica)` → `(seq, version, timestamp)`.
const V1_REPLICAS: TableDefinition<(&str, &str, u64), (u64, u64, i64)> =
    TableDefinition::new("replicas");

/// Format 2's last commit per replica: `(domain, model, replica)` → sealed
/// `(seq, version, timestamp)`.
const V2_LAST_COMMITS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("last_commits");

/// Records rewritten per step of a table.
const CHUNK: usize = 1_024;

/// Migrates `db`, which records format `found` (older than the current one).
pub(super) fn to_current(db: &Database, found: u64) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(backend)?;
    txn.set_durability(Durability::Immediate).map_err(backend)?;
    if !(1..FORMAT_VERSION).contains(&found) {
        return Err(StoreError::Corrupt(format!("format {found} was never written")));
    }
    if found == 1 {
        from_v1(&txn)?;
    }
    if found <= 2 {
        from_v2(&txn)?;
    }
    create_tables(&txn)?;
    if found <= 3 {
        from_v3(&txn)?;
    }
    if found <= 4 {
        super::query::fill_collection_models(&txn)?;
    }
    let mut meta = txn.table(META)?;
    if found <= 6 {
        meta.insert("wal_id", super::new_log_id()).map_err(backend)?;
    }
    meta.insert("format", FORMAT_VERSION).map_err(backend)?;
    drop(meta);
    txn.commit().map_err(backend)
}

fn from_v1(txn: &WriteTransaction) -> Result<(), StoreError> {
    for table in [MODELS, SNAPSHOTS, COLLECTIONS, USERS] {
        seal_pairs(txn, table)?;
    }
    seal_operations(txn)?;
    move_last_commits(txn)
}

/// Seals every record of a table keyed by `(domain, name)`, in place.
fn seal_pairs(
    txn: &WriteTransaction,
    definition: TableDefinition<(&str, &str), &[u8]>,
) -> Result<(), StoreError> {
    let mut table = txn.table(definition)?;
    let mut after: Option<(String, String)> = None;
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        {
            let start = match &after {
                Some((a, b)) => Bound::Excluded((a.as_str(), b.as_str())),
                None => Bound::Unbounded,
            };
            for entry in table.range::<(&str, &str)>((start, Bound::Unbounded)).map_err(backend)? {
                let (key, value) = entry.map_err(backend)?;
                let (a, b) = key.value();
                chunk.push(((a.to_owned(), b.to_owned()), value.value().to_vec()));
                if chunk.len() == CHUNK {
                    break;
                }
            }
        }
        for ((a, b), payload) in &chunk {
            let key = (a.as_str(), b.as_str());
            let sealed = seal_bytes(definition.name(), &key, payload);
            table.insert(key, sealed.as_slice()).map_err(backend)?;
        }
        if chunk.len() < CHUNK {
            return Ok(());
        }
        after = chunk.pop().map(|(last, _)| last);
    }
}

/// Seals every operation, in place.
fn seal_operations(txn: &WriteTransaction) -> Result<(), StoreError> {
    let mut table = txn.table(OPERATIONS)?;
    let mut after: Option<(String, String, u64)> = None;
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        {
            let start = match &after {
                Some((a, b, v)) => Bound::Excluded((a.as_str(), b.as_str(), *v)),
                None => Bound::Unbounded,
            };
            let range = table.range::<(&str, &str, u64)>((start, Bound::Unbounded));
            for entry in range.map_err(backend)? {
                let (key, value) = entry.map_err(backend)?;
                let (a, b, v) = key.value();
                chunk.push(((a.to_owned(), b.to_owned(), v), value.value().to_vec()));
                if chunk.len() == CHUNK {
                    break;
                }
            }
        }
        for ((a, b, v), payload) in &chunk {
            let key = (a.as_str(), b.as_str(), *v);
            let sealed = seal_bytes(OPERATIONS.name(), &key, payload);
            table.insert(key, sealed.as_slice()).map_err(backend)?;
        }
        if chunk.len() < CHUNK {
            return Ok(());
        }
        after = chunk.pop().map(|(last, _)| last);
    }
}

/// Moves format 1's `replicas` into format 2's `last_commits`, sealed, and drops `replicas`.
fn move_last_commits(txn: &WriteTransaction) -> Result<(), StoreError> {
    {
        let old = txn.table(V1_REPLICAS)?;
        let mut new = txn.table(V2_LAST_COMMITS)?;
        let mut after: Option<(String, String, u64)> = None;
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            let start = match &after {
                Some((a, b, r)) => Bound::Excluded((a.as_str(), b.as_str(), *r)),
                None => Bound::Unbounded,
            };
            let range = old.range::<(&str, &str, u64)>((start, Bound::Unbounded));
            for entry in range.map_err(backend)? {
                let (key, value) = entry.map_err(backend)?;
                let (a, b, replica) = key.value();
                chunk.push(((a.to_owned(), b.to_owned(), replica), value.value()));
                if chunk.len() == CHUNK {
                    break;
                }
            }
            for ((a, b, replica), value) in &chunk {
                let key = (a.as_str(), b.as_str(), *replica);
                let payload = postcard::to_stdvec(value).unwrap_or_default();
                let sealed = seal_bytes(V2_LAST_COMMITS.name(), &key, &payload);
                new.insert(key, sealed.as_slice()).map_err(backend)?;
            }
            if chunk.len() < CHUNK {
                break;
            }
            after = chunk.pop().map(|(last, _)| last);
        }
    }
    txn.delete_table(V1_REPLICAS).map_err(backend)?;
    Ok(())
}

/// Moves format 2's `last_commits` into `last_decisions`, each commit as a committed
/// decision, and drops `last_commits`.
fn from_v2(txn: &WriteTransaction) -> Result<(), StoreError> {
    {
        let old = txn.table(V2_LAST_COMMITS)?;
        let mut new = txn.table(LAST_DECISIONS)?;
        let mut after: Option<(String, String, u64)> = None;
        loop {
            let mut chunk = Vec::with_capacity(CHUNK);
            let start = match &after {
                Some((a, b, r)) => Bound::Excluded((a.as_str(), b.as_str(), *r)),
                None => Bound::Unbounded,
            };
            let range = old.range::<(&str, &str, u64)>((start, Bound::Unbounded));
            for entry in range.map_err(backend)? {
                let (key, value) = entry.map_err(backend)?;
                let (a, b, replica) = key.value();
                chunk.push(((a.to_owned(), b.to_owned(), replica), value.value().to_vec()));
                if chunk.len() == CHUNK {
                    break;
                }
            }
            for ((a, b, replica), bytes) in &chunk {
                let key = (a.as_str(), b.as_str(), *replica);
                let value = unseal::<_, (u64, u64, i64)>(V2_LAST_COMMITS.name(), &key, bytes);
                let sealed = match value {
                    Ok((seq, version, timestamp)) => {
                        let decision = StoredDecision::Committed { version, timestamp };
                        seal(LAST_DECISIONS.name(), &key, &(seq, decision))
                    }
                    // Damaged: it fails its checksum in the new table too.
                    Err(_) => bytes.clone(),
                };
                new.insert(key, sealed.as_slice()).map_err(backend)?;
            }
            if chunk.len() < CHUNK {
                break;
            }
            after = chunk.pop().map(|(last, _)| last);
        }
    }
    txn.delete_table(V2_LAST_COMMITS).map_err(backend)?;
    Ok(())
}

/// Makes every model's latest snapshot its first checkpoint.
fn from_v3(txn: &WriteTransaction) -> Result<(), StoreError> {
    let snapshots = txn.table(SNAPSHOTS)?;
    let mut checkpoints = txn.table(CHECKPOINTS)?;
    for entry in snapshots.iter().map_err(backend)? {
        let (key, bytes) = entry.map_err(backend)?;
        let (domain, model) = key.value();
        let Ok(snapshot) = unseal::<_, concord_protocol::ModelSnapshot>(
            SNAPSHOTS.name(),
            &(domain, model),
            bytes.value(),
        ) else {
            continue;
        };
        let k = (domain, model, snapshot.version);
        let sealed = seal(CHECKPOINTS.name(), &k, &snapshot);
        checkpoints.insert(k, sealed.as_slice()).map_err(backend)?;
    }
    Ok(())
}
