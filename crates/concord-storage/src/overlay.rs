//! Runs the synchronous store logic (`store.rs`) over an asynchronous key-value source,
//! for backends whose reads are requests that complete later (IndexedDB).
//!
//! The logic only sees [`KvRead`]/[`KvWrite`]. [`run`] gives it an [`Overlay`]: the rows
//! fetched so far from the source ([`Known`]) with the logic's own writes laid on top,
//! kept in memory ([`Changes`]). When the logic reads something that was not fetched, the
//! overlay records it as a [`Need`] and fails the read; `run` fetches that need (an
//! asynchronous request, inside the caller's transaction) and runs the logic again from the
//! start, with everything fetched so far. A run that missed nothing read only real rows, so
//! its result and its `Changes` are what the logic would have produced directly on the
//! source; the caller then writes the `Changes` in the same transaction.
//!
//! Why this is sound: the caller keeps one transaction open from the first fetch to the
//! last write, and writes nothing before the final run, so every fetch sees the same state;
//! the logic is deterministic, so each run follows the real execution up to its first
//! unfetched read and each rerun gets strictly further — at most one run per distinct read,
//! plus one. Hints (fetched up front) make the usual case one run; they are never needed
//! for correctness.
//!
//! This module does no I/O and knows no backend: the IndexedDB backend provides a
//! [`Source`]; the tests below provide one over plain maps and run the contract suite
//! through it natively.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use crate::encoding::Table;
use crate::error::StorageError;
use crate::store::{KvRead, KvWrite, Visit};

/// A set of tables: the scope of one transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Scope(u16);

impl Scope {
    #[cfg(all(test, not(target_arch = "wasm32")))]
    pub(crate) const ALL: Scope = Scope((1 << Table::ALL.len()) - 1);

    pub(crate) fn of(tables: impl IntoIterator<Item = Table>) -> Scope {
        let mut scope = Scope::default();
        for table in tables {
            scope.add(table);
        }
        scope
    }

    pub(crate) fn add(&mut self, table: Table) {
        self.0 |= 1 << table.index();
    }

    pub(crate) fn contains(self, table: Table) -> bool {
        self.0 & (1 << table.index()) != 0
    }

    /// Its tables, in [`Table::ALL`] order.
    pub(crate) fn tables(self) -> impl Iterator<Item = Table> {
        Table::ALL.into_iter().filter(move |&t| self.contains(t))
    }
}

/// A key range `[start, end)`; `end == None` is unbounded. The whole table is
/// `start = []`, `end = None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: Vec<u8>,
    pub(crate) end: Option<Vec<u8>>,
}

impl Span {
    pub(crate) fn all() -> Span {
        Span { start: Vec::new(), end: None }
    }

    pub(crate) fn new(start: &[u8], end: &[u8]) -> Span {
        Span { start: start.to_vec(), end: Some(end.to_vec()) }
    }

    /// The span of a [`KvRead::scan`] range.
    fn of(range: Option<(&[u8], &[u8])>) -> Span {
        range.map_or_else(Span::all, |(start, end)| Span::new(start, end))
    }

    /// True if no key can be in it (IndexedDB refuses such ranges, so they are never sent).
    pub(crate) fn is_empty(&self) -> bool {
        self.end.as_ref().is_some_and(|end| *end <= self.start)
    }

    fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && self.end.as_ref().is_none_or(|end| key < end.as_slice())
    }

    fn covers(&self, other: &Span) -> bool {
        other.is_empty()
            || (other.start >= self.start
                && match (&self.end, &other.end) {
                    (None, _) => true,
                    (Some(_), None) => false,
                    (Some(mine), Some(theirs)) => theirs <= mine,
                })
    }

    fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        (
            Bound::Included(self.start.as_slice()),
            self.end.as_deref().map_or(Bound::Unbounded, Bound::Excluded),
        )
    }
}

/// Something the logic read that must be fetched from the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Need {
    /// One key: its value, or that it is absent.
    Value(Table, Vec<u8>),
    /// Which keys a range holds (for deleting it and counting what went).
    Keys(Table, Span),
    /// The keys and values of a range (for scanning it).
    Rows(Table, Span),
}

impl Need {
    pub(crate) fn table(&self) -> Table {
        match self {
            Need::Value(table, _) | Need::Keys(table, _) | Need::Rows(table, _) => *table,
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Need::Value(..) => false,
            Need::Keys(_, span) | Need::Rows(_, span) => span.is_empty(),
        }
    }
}

/// What is known of one table of the source.
#[derive(Debug, Default)]
struct KnownTable {
    /// Keys whose value (or absence) is known.
    values: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Keys known to be present, from key-only fetches.
    present: BTreeSet<Vec<u8>>,
    /// Spans whose present keys are all in `present`.
    key_spans: Vec<Span>,
    /// Spans whose rows are all in `values`.
    row_spans: Vec<Span>,
}

impl KnownTable {
    /// `None` if unknown; `Some(None)` if known absent.
    fn value(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        if let Some(value) = self.values.get(key) {
            return Some(value.as_deref());
        }
        let absent = self.row_spans.iter().any(|s| s.contains(key))
            || (self.key_spans.iter().any(|s| s.contains(key)) && !self.present.contains(key));
        absent.then_some(None)
    }

    fn rows(&self, span: &Span) -> Option<Vec<(&[u8], &[u8])>> {
        self.row_spans.iter().any(|s| s.covers(span)).then(|| {
            self.values
                .range::<[u8], _>(span.bounds())
                .filter_map(|(k, v)| v.as_deref().map(|v| (k.as_slice(), v)))
                .collect()
        })
    }

    fn keys(&self, span: &Span) -> Option<Vec<&[u8]>> {
        if self.key_spans.iter().any(|s| s.covers(span)) {
            return Some(self.present.range::<[u8], _>(span.bounds()).map(Vec::as_slice).collect());
        }
        self.rows(span).map(|rows| rows.into_iter().map(|(k, _)| k).collect())
    }
}

/// Everything fetched from the source during one transaction.
#[derive(Debug, Default)]
pub(crate) struct Known {
    tables: [KnownTable; Table::ALL.len()],
}

impl Known {
    /// True if `need` was fetched (so the overlay would not miss it).
    pub(crate) fn knows(&self, need: &Need) -> bool {
        match need {
            Need::Value(table, key) => self.tables[table.index()].value(key).is_some(),
            Need::Keys(table, span) => {
                span.is_empty() || self.tables[table.index()].keys(span).is_some()
            }
            Need::Rows(table, span) => {
                span.is_empty() || self.tables[table.index()].rows(span).is_some()
            }
        }
    }

    pub(crate) fn add_value(&mut self, table: Table, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.tables[table.index()].values.insert(key, value);
    }

    /// Records the present keys of `span`, all of them.
    pub(crate) fn add_keys(&mut self, table: Table, span: Span, keys: Vec<Vec<u8>>) {
        let known = &mut self.tables[table.index()];
        known.present.extend(keys);
        known.key_spans.push(span);
    }

    /// Records the rows of `span`, all of them.
    pub(crate) fn add_rows(&mut self, table: Table, span: Span, rows: Vec<(Vec<u8>, Vec<u8>)>) {
        let known = &mut self.tables[table.index()];
        for (key, value) in rows {
            known.values.insert(key, Some(value));
        }
        known.row_spans.push(span);
    }
}

/// The writes of one table, as final states: the table cleared first (if `cleared`), then
/// the `deleted` ranges, then every key of `points` put (`Some`) or deleted (`None`).
#[derive(Debug, Default)]
pub(crate) struct TableChanges {
    pub(crate) cleared: bool,
    pub(crate) deleted: Vec<Span>,
    pub(crate) points: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl TableChanges {
    fn is_empty(&self) -> bool {
        !self.cleared && self.deleted.is_empty() && self.points.is_empty()
    }

    /// True if the base value of `key` no longer shows.
    fn hides(&self, key: &[u8]) -> bool {
        self.cleared || self.deleted.iter().any(|s| s.contains(key))
    }
}

/// Every write the logic made, to be applied in one transaction.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub(crate) tables: [TableChanges; Table::ALL.len()],
}

impl Changes {
    #[cfg(all(test, not(target_arch = "wasm32")))]
    pub(crate) fn is_empty(&self) -> bool {
        self.tables.iter().all(TableChanges::is_empty)
    }

    /// The tables that are written, with their changes.
    pub(crate) fn by_table(&self) -> impl Iterator<Item = (Table, &TableChanges)> {
        Table::ALL
            .into_iter()
            .map(|t| (t, &self.tables[t.index()]))
            .filter(|(_, changes)| !changes.is_empty())
    }
}

/// Why a run of the logic did not count.
#[derive(Debug)]
enum Fault {
    Missing(Need),
    OutOfScope(Table),
    ReadOnly(Table),
}

/// The view one run of the logic works on: known rows plus its own writes.
#[derive(Debug)]
pub(crate) struct Overlay<'a> {
    known: &'a Known,
    scope: Scope,
    writable: bool,
    changes: Changes,
    /// The first fault; reads take `&self`, hence the cell.
    fault: RefCell<Option<Fault>>,
}

impl<'a> Overlay<'a> {
    fn new(known: &'a Known, scope: Scope, writable: bool) -> Overlay<'a> {
        Overlay { known, scope, writable, changes: Changes::default(), fault: RefCell::new(None) }
    }

    /// Records `fault` and fails the access; [`run`] looks at the fault, not at this error.
    fn fail<T>(&self, fault: Fault) -> Result<T, StorageError> {
        self.fault.borrow_mut().get_or_insert(fault);
        Err(StorageError::Backend("read of a row not fetched yet".into()))
    }

    fn touch(&self, table: Table) -> Result<(), StorageError> {
        if self.scope.contains(table) { Ok(()) } else { self.fail(Fault::OutOfScope(table)) }
    }

    fn touch_mut(&mut self, table: Table) -> Result<&mut TableChanges, StorageError> {
        self.touch(table)?;
        if !self.writable {
            return self.fail(Fault::ReadOnly(table));
        }
        Ok(&mut self.changes.tables[table.index()])
    }
}

impl KvRead for Overlay<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.touch(table)?;
        let changes = &self.changes.tables[table.index()];
        if let Some(value) = changes.points.get(key) {
            return Ok(value.clone());
        }
        if changes.hides(key) {
            return Ok(None);
        }
        match self.known.tables[table.index()].value(key) {
            Some(value) => Ok(value.map(<[u8]>::to_vec)),
            None => self.fail(Fault::Missing(Need::Value(table, key.to_vec()))),
        }
    }

    fn scan(
        &self,
        table: Table,
        range: Option<(&[u8], &[u8])>,
        visit: Visit<'_>,
    ) -> Result<(), StorageError> {
        self.touch(table)?;
        let span = Span::of(range);
        if span.is_empty() {
            return Ok(());
        }
        let changes = &self.changes.tables[table.index()];
        let mut rows: BTreeMap<&[u8], &[u8]> = BTreeMap::new();
        if !changes.cleared {
            let Some(base) = self.known.tables[table.index()].rows(&span) else {
                return self.fail(Fault::Missing(Need::Rows(table, span)));
            };
            rows.extend(base.into_iter().filter(|(key, _)| !changes.hides(key)));
        }
        for (key, value) in changes.points.range::<[u8], _>(span.bounds()) {
            match value {
                Some(value) => rows.insert(key, value),
                None => rows.remove(key.as_slice()),
            };
        }
        for (key, value) in rows {
            visit(key, value)?;
        }
        Ok(())
    }
}

impl KvWrite for Overlay<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.touch_mut(table)?.points.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StorageError> {
        self.touch_mut(table)?.points.insert(key.to_vec(), None);
        Ok(())
    }

    fn delete_range(
        &mut self,
        table: Table,
        start: &[u8],
        end: &[u8],
    ) -> Result<u64, StorageError> {
        self.touch_mut(table)?;
        let span = Span::new(start, end);
        if span.is_empty() {
            return Ok(0);
        }
        let changes = &self.changes.tables[table.index()];
        let mut count = 0;
        if !changes.cleared {
            let Some(keys) = self.known.tables[table.index()].keys(&span) else {
                return self.fail(Fault::Missing(Need::Keys(table, span)));
            };
            count += keys
                .into_iter()
                .filter(|key| !changes.hides(key) && !changes.points.contains_key(*key))
                .count();
        }
        count +=
            changes.points.range::<[u8], _>(span.bounds()).filter(|(_, v)| v.is_some()).count();
        let changes = &mut self.changes.tables[table.index()];
        // Points in the range go: the range deletion is written before every point.
        changes.points.retain(|key, _| !span.contains(key));
        changes.deleted.push(span);
        Ok(count as u64)
    }

    fn clear(&mut self, table: Table) -> Result<(), StorageError> {
        *self.touch_mut(table)? = TableChanges { cleared: true, ..TableChanges::default() };
        Ok(())
    }
}

/// Fetches needs from the store, inside the caller's transaction.
pub(crate) trait Source {
    /// Fetches every need in `needs` into `known`; afterwards `known.knows(need)` holds for
    /// each.
    async fn fetch(&mut self, needs: &[Need], known: &mut Known) -> Result<(), StorageError>;
}

/// Runs `logic` against the source until it completes with nothing missing (see the
/// module documentation), then returns its result and its writes. `hints` are fetched
/// first, all at once; reads or writes outside `scope`, and writes when `writable` is
/// false, fail with an internal error instead of reaching the source.
pub(crate) async fn run<T>(
    source: &mut impl Source,
    scope: Scope,
    writable: bool,
    hints: &[Need],
    mut logic: impl FnMut(&mut dyn KvWrite) -> Result<T, StorageError>,
) -> Result<(T, Changes), StorageError> {
    let mut known = Known::default();
    let hints: Vec<Need> =
        hints.iter().filter(|n| scope.contains(n.table()) && !n.is_empty()).cloned().collect();
    if !hints.is_empty() {
        source.fetch(&hints, &mut known).await?;
    }
    loop {
        let mut overlay = Overlay::new(&known, scope, writable);
        let result = logic(&mut overlay);
        let Overlay { changes, fault, .. } = overlay;
        match fault.into_inner() {
            None => return result.map(|value| (value, changes)),
            Some(Fault::Missing(need)) => {
                // A need that is known cannot miss; if it did, refetching would loop.
                if known.knows(&need) {
                    return Err(StorageError::Backend(format!(
                        "internal error: {need:?} is still missing after it was fetched"
                    )));
                }
                source.fetch(std::slice::from_ref(&need), &mut known).await?;
                if !known.knows(&need) {
                    return Err(StorageError::Backend(format!(
                        "internal error: fetching {need:?} did not record it"
                    )));
                }
            }
            Some(Fault::OutOfScope(table)) => {
                return Err(StorageError::Backend(format!(
                    "internal error: the store touched table `{}` outside its transaction",
                    table.name()
                )));
            }
            Some(Fault::ReadOnly(table)) => {
                return Err(StorageError::Backend(format!(
                    "internal error: a read-only operation wrote to table `{}`",
                    table.name()
                )));
            }
        }
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    //! The bridge natively, over plain maps standing in for IndexedDB: the whole contract
    //! suite runs through it, with and without hints, so every path of the overlay (misses,
    //! reruns, range deletes, clears) is exercised without a browser.

    use std::collections::BTreeSet;
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use concord_ot::ReplicaId;
    use concord_protocol::ModelId;

    use super::*;
    use crate::adapter::{OfflineStore, StorageAdapter};
    use crate::batch::Batch;
    use crate::footprint::{self, Footprint};
    use crate::records::{
        IdentityCache, ModelState, ModelSummary, PendingOperation, StoreKey, Unsynced,
    };
    use crate::store;

    type Rows = BTreeMap<Vec<u8>, Vec<u8>>;
    type Tables = [Rows; Table::ALL.len()];
    /// Each store's tables, and whether a handle has it open.
    type Slots = BTreeMap<StoreKey, (bool, Arc<Mutex<Tables>>)>;

    /// Fetches from the maps, counting fetch rounds.
    struct MapSource<'a> {
        tables: &'a Tables,
        rounds: usize,
    }

    impl Source for MapSource<'_> {
        async fn fetch(&mut self, needs: &[Need], known: &mut Known) -> Result<(), StorageError> {
            self.rounds += 1;
            for need in needs {
                match need {
                    Need::Value(table, key) => {
                        let value = self.tables[table.index()].get(key).cloned();
                        known.add_value(*table, key.clone(), value);
                    }
                    Need::Keys(table, span) => {
                        let keys = self.tables[table.index()]
                            .range::<[u8], _>(span.bounds())
                            .map(|(k, _)| k.clone())
                            .collect();
                        known.add_keys(*table, span.clone(), keys);
                    }
                    Need::Rows(table, span) => {
                        let rows = self.tables[table.index()]
                            .range::<[u8], _>(span.bounds())
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        known.add_rows(*table, span.clone(), rows);
                    }
                }
            }
            Ok(())
        }
    }

    fn write_changes(tables: &mut Tables, changes: &Changes) {
        for (table, changes) in changes.by_table() {
            let rows = &mut tables[table.index()];
            if changes.cleared {
                rows.clear();
            }
            for span in &changes.deleted {
                rows.retain(|key, _| !span.contains(key));
            }
            for (key, value) in &changes.points {
                match value {
                    Some(value) => rows.insert(key.clone(), value.clone()),
                    None => rows.remove(key),
                };
            }
        }
    }

    /// Runs `logic` over `tables` through the bridge, as the IndexedDB backend does.
    fn bridged<T>(
        tables: &Mutex<Tables>,
        footprint: Footprint,
        hinted: bool,
        writable: bool,
        logic: impl FnMut(&mut dyn KvWrite) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut tables = tables.lock().unwrap();
        let hints = if hinted { footprint.hints } else { Vec::new() };
        let (value, changes) = {
            let mut source = MapSource { tables: &tables, rounds: 0 };
            pollster::block_on(run(&mut source, footprint.scope, writable, &hints, logic))?
        };
        assert!(writable || changes.is_empty());
        write_changes(&mut tables, &changes);
        Ok(value)
    }

    #[derive(Debug, Clone, Default)]
    struct BridgeAdapter {
        hinted: bool,
        stores: Arc<Mutex<Slots>>,
    }

    #[derive(Debug)]
    struct BridgeStore {
        key: StoreKey,
        hinted: bool,
        tables: Arc<Mutex<Tables>>,
        adapter: BridgeAdapter,
    }

    impl Drop for BridgeStore {
        fn drop(&mut self) {
            if let Some(slot) = self.adapter.stores.lock().unwrap().get_mut(&self.key) {
                slot.0 = false;
            }
        }
    }

    #[async_trait]
    impl StorageAdapter for BridgeAdapter {
        async fn open(&self, key: &StoreKey) -> Result<Box<dyn OfflineStore>, StorageError> {
            let tables = {
                let mut stores = self.stores.lock().unwrap();
                let slot = stores.entry(key.clone()).or_default();
                if slot.0 {
                    return Err(StorageError::InUse { store: key.to_string() });
                }
                slot.0 = true;
                slot.1.clone()
            };
            let store = BridgeStore {
                key: key.clone(),
                hinted: self.hinted,
                tables,
                adapter: self.clone(),
            };
            bridged(&store.tables, footprint::prepare(), self.hinted, true, |kv| {
                store::prepare_current(kv, key)
            })?;
            Ok(Box::new(store))
        }

        async fn destroy(&self, key: &StoreKey) -> Result<(), StorageError> {
            let mut stores = self.stores.lock().unwrap();
            if stores.get(key).is_some_and(|slot| slot.0) {
                return Err(StorageError::InUse { store: key.to_string() });
            }
            stores.remove(key);
            Ok(())
        }
    }

    impl BridgeStore {
        fn read<T>(
            &self,
            footprint: Footprint,
            logic: impl Fn(&dyn KvRead) -> Result<T, StorageError>,
        ) -> Result<T, StorageError> {
            bridged(&self.tables, footprint, self.hinted, false, |kv| logic(kv))
        }
    }

    #[async_trait]
    impl OfflineStore for BridgeStore {
        fn key(&self) -> &StoreKey {
            &self.key
        }

        async fn models(&self) -> Result<Vec<ModelSummary>, StorageError> {
            self.read(footprint::models(), store::models)
        }

        async fn unsynced(&self) -> Result<Unsynced, StorageError> {
            self.read(footprint::unsynced(), store::unsynced)
        }

        async fn load_model(&self, model: &ModelId) -> Result<Option<ModelState>, StorageError> {
            self.read(footprint::load_model(model), |kv| store::load_model(kv, model))
        }

        async fn load_model_head(
            &self,
            model: &ModelId,
        ) -> Result<Option<ModelState>, StorageError> {
            self.read(footprint::load_model_head(model), |kv| store::load_model_head(kv, model))
        }

        async fn pending_page(
            &self,
            model: &ModelId,
            after: Option<u64>,
            limit: usize,
        ) -> Result<Vec<PendingOperation>, StorageError> {
            self.read(footprint::pending_page(), |kv| {
                store::pending_page(kv, model, after, None, limit)
            })
        }

        async fn subscriptions(&self) -> Result<BTreeSet<ModelId>, StorageError> {
            self.read(footprint::subscriptions(), store::subscriptions)
        }

        async fn replica_id(&self) -> Result<Option<ReplicaId>, StorageError> {
            self.read(footprint::replica_id(), store::replica_id)
        }

        async fn identities(&self) -> Result<IdentityCache, StorageError> {
            self.read(footprint::identities(), store::identities)
        }

        async fn commit_group(&self, batches: Vec<Batch>) -> Result<(), StorageError> {
            if batches.is_empty() {
                return Ok(());
            }
            bridged(&self.tables, footprint::apply(&batches), self.hinted, true, |kv| {
                store::apply(kv, &batches)
            })
        }
    }

    #[test]
    fn the_contract_holds_through_the_bridge_with_hints() {
        for check in crate::contract::CHECKS {
            let adapter = BridgeAdapter { hinted: true, ..BridgeAdapter::default() };
            pollster::block_on((check.run)(&adapter));
        }
    }

    #[test]
    fn the_contract_holds_through_the_bridge_without_hints() {
        for check in crate::contract::CHECKS {
            let adapter = BridgeAdapter { hinted: false, ..BridgeAdapter::default() };
            pollster::block_on((check.run)(&adapter));
        }
    }

    #[test]
    fn hints_make_a_batch_one_round() {
        let tables = Mutex::new(Tables::default());
        let key = crate::contract::key();
        bridged(&tables, footprint::prepare(), true, true, |kv| store::prepare_current(kv, &key))
            .unwrap();
        let batches = vec![crate::contract::full_model_batch(1)];
        bridged(&tables, footprint::apply(&batches), true, true, |kv| store::apply(kv, &batches))
            .unwrap();
        let id = crate::contract::model_id(1);
        let batches = vec![
            Batch::new()
                .with(crate::Mutation::RemovePendingThrough { model: id.clone(), through_seq: 1 })
                .with(crate::Mutation::DeleteModel(crate::contract::model_id(2)))
                .with(crate::Mutation::SetReplicaId(ReplicaId(3))),
        ];
        let footprint = footprint::apply(&batches);
        let guard = tables.lock().unwrap();
        let mut source = MapSource { tables: &guard, rounds: 0 };
        let (_, changes) =
            pollster::block_on(run(&mut source, footprint.scope, true, &footprint.hints, |kv| {
                store::apply(kv, &batches)
            }))
            .unwrap();
        assert_eq!(source.rounds, 1, "everything came with the hints");
        assert!(!changes.is_empty());
        let mut source = MapSource { tables: &guard, rounds: 0 };
        let footprint = footprint::load_model(&id);
        pollster::block_on(run(&mut source, footprint.scope, false, &footprint.hints, |kv| {
            store::load_model(kv, &id)
        }))
        .unwrap();
        assert_eq!(source.rounds, 1);
    }

    #[test]
    fn touching_a_table_outside_the_scope_is_an_internal_error() {
        let scope = Scope::of([Table::Users, Table::Meta]);
        assert_eq!(scope.tables().collect::<Vec<_>>(), [Table::Meta, Table::Users]);
        assert_eq!(Scope::ALL.tables().collect::<Vec<_>>(), Table::ALL);
        let tables = Tables::default();
        let mut source = MapSource { tables: &tables, rounds: 0 };
        let result =
            pollster::block_on(run(&mut source, Scope::of([Table::Models]), true, &[], |kv| {
                kv.put(Table::Users, b"u", b"v")
            }));
        assert!(matches!(result, Err(StorageError::Backend(m)) if m.contains("users")));
        let result = pollster::block_on(run(&mut source, Scope::ALL, false, &[], |kv| {
            kv.delete(Table::Meta, b"k")
        }));
        assert!(matches!(result, Err(StorageError::Backend(m)) if m.contains("read-only")));
    }

    #[test]
    fn overlay_writes_show_through_reads_and_counts() {
        let mut tables = Tables::default();
        for (k, v) in [(&b"a"[..], &b"1"[..]), (b"b", b"2"), (b"c", b"3"), (b"d", b"4")] {
            tables[Table::Users.index()].insert(k.to_vec(), v.to_vec());
        }
        let mut source = MapSource { tables: &tables, rounds: 0 };
        let (seen, changes) = pollster::block_on(run(&mut source, Scope::ALL, true, &[], |kv| {
            kv.put(Table::Users, b"bb", b"new")?;
            kv.delete(Table::Users, b"c")?;
            // b, bb (written), not c (deleted): 2.
            let removed = kv.delete_range(Table::Users, b"b", b"d")?;
            kv.put(Table::Users, b"b", b"back")?;
            let mut seen = Vec::new();
            kv.scan(Table::Users, None, &mut |k, v| {
                seen.push((k.to_vec(), v.to_vec()));
                Ok(())
            })?;
            Ok((removed, seen, kv.get(Table::Users, b"bb")?, kv.get(Table::Users, b"d")?))
        }))
        .unwrap();
        let (removed, rows, bb, d) = seen;
        assert_eq!(removed, 2);
        let expected: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), b"back".to_vec()),
            (b"d".to_vec(), b"4".to_vec()),
        ];
        assert_eq!(rows, expected);
        assert_eq!((bb, d), (None, Some(b"4".to_vec())));
        let mut written = tables.clone();
        write_changes(&mut written, &changes);
        assert_eq!(written[Table::Users.index()].clone().into_iter().collect::<Vec<_>>(), expected);
    }
}
