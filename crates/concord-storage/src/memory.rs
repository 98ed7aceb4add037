//! The memory backend: stores that live as long as their [`MemoryAdapter`] (and its
//! clones). For tests, and for applications that want offline editing without persistence.
//!
//! It keeps the same tables and byte format as the file backend and goes through the same
//! checks, so it behaves like a persistent store that is never written to disk: "reopening"
//! a store (opening its key again on the same adapter after the handle was dropped) finds
//! everything committed.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::adapter::{OfflineStore, StorageAdapter};
use crate::encoding::Table;
use crate::error::StorageError;
use crate::records::StoreKey;
use crate::store::{self, KvRead, KvStore, KvWrite, Visit};

type Rows = BTreeMap<Vec<u8>, Vec<u8>>;

/// The tables of one store.
#[derive(Debug, Default)]
struct Tables {
    tables: [Rows; Table::ALL.len()],
}

impl KvRead for Tables {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.tables[table.index()].get(key).cloned())
    }

    fn scan(
        &self,
        table: Table,
        range: Option<(&[u8], &[u8])>,
        visit: Visit<'_>,
    ) -> Result<(), StorageError> {
        let rows = &self.tables[table.index()];
        let range = match range {
            Some((start, end)) => (Bound::Included(start), Bound::Excluded(end)),
            None => (Bound::Unbounded, Bound::Unbounded),
        };
        for (key, value) in rows.range::<[u8], _>(range) {
            visit(key, value)?;
        }
        Ok(())
    }
}

/// A write transaction: changes go straight to the tables and are recorded so that they
/// can be undone if the transaction is discarded.
struct Transaction<'a> {
    tables: &'a mut Tables,
    undo: Vec<(Table, Vec<u8>, Option<Vec<u8>>)>,
}

impl Transaction<'_> {
    fn rollback(self) {
        let Transaction { tables, undo } = self;
        for (table, key, old) in undo.into_iter().rev() {
            let rows = &mut tables.tables[table.index()];
            match old {
                Some(old) => rows.insert(key, old),
                None => rows.remove(&key),
            };
        }
    }
}

impl KvRead for Transaction<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.tables.get(table, key)
    }

    fn scan(
        &self,
        table: Table,
        range: Option<(&[u8], &[u8])>,
        visit: Visit<'_>,
    ) -> Result<(), StorageError> {
        self.tables.scan(table, range, visit)
    }
}

impl KvWrite for Transaction<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let old = self.tables.tables[table.index()].insert(key.to_vec(), value.to_vec());
        self.undo.push((table, key.to_vec(), old));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StorageError> {
        if let Some(old) = self.tables.tables[table.index()].remove(key) {
            self.undo.push((table, key.to_vec(), Some(old)));
        }
        Ok(())
    }

    fn delete_range(
        &mut self,
        table: Table,
        start: &[u8],
        end: &[u8],
    ) -> Result<u64, StorageError> {
        let rows = &mut self.tables.tables[table.index()];
        let keys: Vec<Vec<u8>> = rows
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            if let Some(old) = rows.remove(key) {
                self.undo.push((table, key.clone(), Some(old)));
            }
        }
        Ok(keys.len() as u64)
    }

    fn clear(&mut self, table: Table) -> Result<(), StorageError> {
        let rows = std::mem::take(&mut self.tables.tables[table.index()]);
        self.undo.extend(rows.into_iter().map(|(k, v)| (table, k, Some(v))));
        Ok(())
    }
}

/// Runs `f` in a write transaction on `tables`: kept if it succeeds, undone if not.
fn write<T>(
    tables: &mut Tables,
    f: impl FnOnce(&mut dyn KvWrite) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let mut tx = Transaction { tables, undo: Vec::new() };
    match f(&mut tx) {
        Ok(value) => Ok(value),
        Err(error) => {
            tx.rollback();
            Err(error)
        }
    }
}

/// One store and whether a handle has it open.
#[derive(Debug, Default)]
struct Slot {
    tables: Mutex<Tables>,
    open: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, StorageError> {
    mutex.lock().map_err(|_| StorageError::Backend("memory store poisoned by a panic".into()))
}

/// Holds memory stores by key. Clones share the same stores.
#[derive(Debug, Clone, Default)]
pub struct MemoryAdapter {
    stores: Arc<Mutex<BTreeMap<StoreKey, Arc<Slot>>>>,
}

impl MemoryAdapter {
    pub fn new() -> MemoryAdapter {
        MemoryAdapter::default()
    }

    /// Opens the store for `key`, as [`StorageAdapter::open`] does, with a concrete type.
    pub fn open_store(&self, key: &StoreKey) -> Result<MemoryStore, StorageError> {
        let slot = lock(&self.stores)?.entry(key.clone()).or_default().clone();
        if slot.open.swap(true, Ordering::AcqRel) {
            return Err(StorageError::InUse { store: format!("memory store {key}") });
        }
        let store = MemoryStore { key: key.clone(), slot };
        store.write(|kv| store::prepare_current(kv, key))?;
        Ok(store)
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl StorageAdapter for MemoryAdapter {
    async fn open(&self, key: &StoreKey) -> Result<Box<dyn OfflineStore>, StorageError> {
        Ok(Box::new(self.open_store(key)?))
    }

    async fn destroy(&self, key: &StoreKey) -> Result<(), StorageError> {
        let mut stores = lock(&self.stores)?;
        if let Some(slot) = stores.get(key) {
            if slot.open.load(Ordering::Acquire) {
                return Err(StorageError::InUse { store: format!("memory store {key}") });
            }
            stores.remove(key);
        }
        Ok(())
    }
}

/// An open memory store. Dropping it closes it.
#[derive(Debug)]
pub struct MemoryStore {
    key: StoreKey,
    slot: Arc<Slot>,
}

impl Drop for MemoryStore {
    fn drop(&mut self) {
        self.slot.open.store(false, Ordering::Release);
    }
}

impl KvStore for MemoryStore {
    fn store_key(&self) -> &StoreKey {
        &self.key
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&dyn KvRead) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        f(&*lock(&self.slot.tables)?)
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut dyn KvWrite) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        write(&mut *lock(&self.slot.tables)?, f)
    }
}
