//! The IndexedDB backend (feature `indexeddb`, wasm32 only): one IndexedDB database per
//! store, in the page's or worker's origin. It is not a cache or a sync layer: it stores
//! what the engine commits, with the same checks, tables and bytes as the other backends.
//!
//! - **Layout.** The database is named after the [`StoreKey`] (see
//!   [`IdbAdapter::database_name`]); it has one object store per table, with out-of-line
//!   binary keys (`Uint8Array`), which IndexedDB orders bytewise like redb and the memory
//!   backend, and `Uint8Array` values holding the same record bytes.
//! - **The async/sync bridge.** `store.rs`'s logic is synchronous over `KvRead`/`KvWrite`,
//!   while IndexedDB reads are requests answered later, and a transaction commits by itself
//!   as soon as control returns to the event loop with no request pending. So each commit
//!   runs in ONE readwrite transaction like this ([`overlay`](crate::overlay)): fetch what
//!   the batch will read (hints from [`footprint`](crate::footprint)) with requests issued
//!   together; run the logic against those rows plus its own writes kept in memory; if it
//!   reads a row not fetched, fetch that too and run it again from the start; once a run
//!   misses nothing, issue its puts and deletes in the same transaction and wait for
//!   `complete`. Between the first request and the last, the only thing awaited is an
//!   IndexedDB request of that transaction (its callbacks resume the future in a
//!   microtask, while the transaction is still active), so it never commits early; nothing
//!   is written before the final run, and an error at any step aborts the transaction, so
//!   a commit is all or nothing. Reads use the same bridge in a readonly transaction.
//! - **Durability.** Readwrite transactions ask for `durability: "strict"`, so `complete`
//!   (when [`OfflineStore::commit`] returns) means flushed to disk.
//! - **Format versions** are IndexedDB versions (`FORMAT_VERSION`): a new database is set
//!   up, and an older one migrated, inside the `upgradeneeded` transaction, through the same
//!   bridge, so a failed migration aborts the upgrade and leaves the old version. A database
//!   of a newer version is refused with [`StorageError::NewerFormat`] and left alone.
//! - **One owner.** An open store holds an exclusive Web Lock named after its database, so
//!   a second opener in any tab or worker of the origin gets [`StorageError::InUse`] at
//!   once; the lock dies with its tab. (Where `navigator.locks` is missing, the lock only
//!   covers this page.)
//! - **Other connections.** When another connection upgrades or deletes the database
//!   (`versionchange`), or the browser closes it, the handle closes itself and every later
//!   call fails with [`StorageError::Closed`]; a commit already under way finishes or fails
//!   as a whole. An open or destroy `blocked` by a connection that does not close is given
//!   up after [`IdbAdapter::blocked_timeout`] with [`StorageError::InUse`], instead of
//!   waiting forever.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use concord_ot::ReplicaId;
use concord_protocol::ModelId;
use js_sys::{Array, ArrayBuffer, Function, Object, Promise, Reflect, Uint8Array};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::{JsFuture, spawn_local};
use web_sys::{
    DomException, Event, EventTarget, IdbDatabase, IdbFactory, IdbKeyRange, IdbObjectStore,
    IdbOpenDbRequest, IdbRequest, IdbTransaction, IdbTransactionMode,
};

use crate::adapter::{OfflineStore, StorageAdapter};
use crate::batch::Batch;
use crate::encoding::{FORMAT_VERSION, Table};
use crate::error::StorageError;
use crate::footprint::{self, Footprint};
use crate::overlay::{self, Changes, Known, Need, Source, Span};
use crate::records::{
    IdentityCache, ModelState, ModelSummary, PendingOperation, StoreKey, Unsynced,
};
use crate::store::{self, KvRead, KvWrite, MIGRATIONS, Migration};

/// The database name prefix of [`IdbAdapter::new`].
pub const DEFAULT_PREFIX: &str = "concord-store:";

/// How long [`IdbAdapter::new`] waits on a `blocked` open or delete.
pub const DEFAULT_BLOCKED_TIMEOUT: Duration = Duration::from_secs(5);

/// Creates stores as IndexedDB databases of the current origin. Clones are equivalent.
#[derive(Debug, Clone)]
pub struct IdbAdapter {
    prefix: String,
    blocked_timeout: Duration,
}

impl Default for IdbAdapter {
    fn default() -> IdbAdapter {
        IdbAdapter::new()
    }
}

impl IdbAdapter {
    /// Databases named `concord-store:<server>~<user>`.
    pub fn new() -> IdbAdapter {
        IdbAdapter::with_prefix(DEFAULT_PREFIX)
    }

    /// Databases named `<prefix><server>~<user>`: separate sets of stores in one origin
    /// (tests, or two applications on one origin).
    pub fn with_prefix(prefix: impl Into<String>) -> IdbAdapter {
        IdbAdapter { prefix: prefix.into(), blocked_timeout: DEFAULT_BLOCKED_TIMEOUT }
    }

    /// How long an open that must upgrade, or a destroy, waits while another connection
    /// that ignores `versionchange` keeps the database open, before failing with
    /// [`StorageError::InUse`].
    pub fn blocked_timeout(mut self, timeout: Duration) -> IdbAdapter {
        self.blocked_timeout = timeout;
        self
    }

    /// The database of the store for `key`: the prefix, then the server and the user with
    /// every byte outside `[A-Za-z0-9._-]` escaped as `%XX`, joined by `~` (so distinct
    /// keys never share a database; the store also records its key).
    pub fn database_name(&self, key: &StoreKey) -> String {
        fn escape(out: &mut String, s: &str) {
            for byte in s.bytes() {
                if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
                    out.push(char::from(byte));
                } else {
                    out.push_str(&format!("%{byte:02X}"));
                }
            }
        }
        let mut name = self.prefix.clone();
        escape(&mut name, &key.server);
        name.push('~');
        escape(&mut name, &key.user);
        name
    }

    /// Opens the store for `key`, as [`StorageAdapter::open`] does, with a concrete type.
    pub async fn open_store(&self, key: &StoreKey) -> Result<IdbStore, StorageError> {
        self.open_with(key, FORMAT_VERSION, MIGRATIONS).await
    }

    pub(crate) async fn open_with(
        &self,
        key: &StoreKey,
        supported: u32,
        migrations: &[Migration],
    ) -> Result<IdbStore, StorageError> {
        let name = self.database_name(key);
        let factory = factory()?;
        let Some(lock) = StoreLock::acquire(&name).await? else {
            return Err(StorageError::InUse { store: name });
        };
        let database =
            open_database(&factory, &name, key, supported, migrations, self.blocked_timeout)
                .await?;
        let handle = IdbStore::new(key.clone(), name, database, lock)?;
        let stores = handle.connection.database.object_store_names();
        if let Some(missing) = Table::ALL.iter().find(|t| !stores.contains(t.name())) {
            return Err(StorageError::Corrupt(format!(
                "database {} has no object store `{}`",
                handle.name,
                missing.name()
            )));
        }
        // An upgrade has prepared a new or older database already; this checks the key
        // (and format) of one that needed no upgrade.
        handle
            .write(footprint::prepare(), |kv| {
                store::prepare(kv, key, supported, migrations).map(drop)
            })
            .await?;
        Ok(handle)
    }
}

#[async_trait(?Send)]
impl StorageAdapter for IdbAdapter {
    async fn open(&self, key: &StoreKey) -> Result<Box<dyn OfflineStore>, StorageError> {
        Ok(Box::new(self.open_store(key).await?))
    }

    /// Deletes the database. If a connection that ignores `versionchange` keeps it open
    /// past the blocked timeout, this fails with [`StorageError::InUse`]; IndexedDB cannot
    /// withdraw the request, so the deletion then happens when that connection closes.
    async fn destroy(&self, key: &StoreKey) -> Result<(), StorageError> {
        let name = self.database_name(key);
        let factory = factory()?;
        // Holding the lock proves that no store handle has the database open.
        let Some(_lock) = StoreLock::acquire(&name).await? else {
            return Err(StorageError::InUse { store: name });
        };
        let request = factory.delete_database(&name).map_err(|e| js_error("deleting", &e))?;
        let events = Events::listen(&request, &["success", "error", "blocked"])?;
        let mut deadline = None;
        loop {
            let Some(event) = next_before(&events, deadline.as_mut()).await else {
                return Err(StorageError::InUse {
                    store: format!(
                        "{name}: its deletion is blocked by a connection that does not close \
                         (another tab, or code that ignores versionchange); it stays queued \
                         and happens when that connection closes"
                    ),
                });
            };
            match event.type_().as_str() {
                "blocked" if deadline.is_none() => deadline = Some(sleep(self.blocked_timeout)?),
                "success" => return Ok(()),
                "error" => return Err(request_error("deleting", &request)),
                _ => {}
            }
        }
    }
}

/// One open IndexedDB store. Dropping it closes the connection and releases the lock.
pub struct IdbStore {
    key: StoreKey,
    name: String,
    connection: Rc<Connection>,
    /// Closes the connection on `versionchange` and `close`; kept alive with the handle.
    on_close: Closure<dyn FnMut(Event)>,
    #[cfg(test)]
    fault: Cell<Option<tests::Fault>>,
}

/// The connection and what goes with it, shared with the `versionchange` listener.
struct Connection {
    database: IdbDatabase,
    closed: Cell<bool>,
    lock: RefCell<Option<StoreLock>>,
}

impl Connection {
    fn close(&self) {
        if !self.closed.replace(true) {
            // Transactions already started still finish; no new one can start.
            self.database.close();
        }
        // A closed handle must not keep the next owner out.
        drop(self.lock.borrow_mut().take());
    }
}

impl fmt::Debug for IdbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdbStore")
            .field("key", &self.key)
            .field("database", &self.name)
            .field("closed", &self.connection.closed.get())
            .finish_non_exhaustive()
    }
}

const CLOSING_EVENTS: [&str; 2] = ["versionchange", "close"];

impl IdbStore {
    fn new(
        key: StoreKey,
        name: String,
        database: IdbDatabase,
        lock: StoreLock,
    ) -> Result<IdbStore, StorageError> {
        let connection = Rc::new(Connection {
            database,
            closed: Cell::new(false),
            lock: RefCell::new(Some(lock)),
        });
        let on_close = {
            let connection = connection.clone();
            Closure::<dyn FnMut(Event)>::new(move |_: Event| connection.close())
        };
        let handle = IdbStore {
            key,
            name,
            connection,
            on_close,
            #[cfg(test)]
            fault: Cell::new(None),
        };
        for event in CLOSING_EVENTS {
            handle
                .connection
                .database
                .add_event_listener_with_callback(event, handle.on_close.as_ref().unchecked_ref())
                .map_err(|e| js_error("listening to the database", &e))?;
        }
        Ok(handle)
    }

    /// The database's name.
    pub fn database_name(&self) -> &str {
        &self.name
    }

    /// True once the connection was closed by another connection's upgrade or deletion,
    /// or by the browser; every call then fails with [`StorageError::Closed`].
    pub fn is_closed(&self) -> bool {
        self.connection.closed.get()
    }

    fn database(&self) -> Result<&IdbDatabase, StorageError> {
        if self.connection.closed.get() {
            Err(StorageError::Closed)
        } else {
            Ok(&self.connection.database)
        }
    }

    /// An IndexedDB failure is reported as [`StorageError::Closed`] when the connection
    /// was closed meanwhile (the browser closing it aborts its transactions); the store's
    /// own errors (a rejected batch, a bad record) are kept.
    fn closed_or(&self, error: StorageError) -> StorageError {
        match error {
            StorageError::Backend(_) | StorageError::Io(_) if self.connection.closed.get() => {
                StorageError::Closed
            }
            other => other,
        }
    }

    pub(crate) async fn read<T>(
        &self,
        footprint: Footprint,
        logic: impl Fn(&dyn KvRead) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let tx = transaction(self.database()?, &footprint, false)?;
        let mut source = TxSource { tx: &tx };
        let (value, _) =
            overlay::run(&mut source, footprint.scope, false, &footprint.hints, |kv| logic(kv))
                .await
                .map_err(|e| self.closed_or(e))?;
        Ok(value)
    }

    /// Runs `logic` in one durable readwrite transaction; returns once it is complete.
    async fn write<T>(
        &self,
        footprint: Footprint,
        logic: impl FnMut(&mut dyn KvWrite) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let tx = transaction(self.database()?, &footprint, true)?;
        let done = Events::listen(&tx, &["complete", "abort"])?;
        let outcome = async {
            let value = run_in(&tx, &footprint, logic).await?;
            #[cfg(test)]
            self.inject_fault(&tx)?;
            Ok(value)
        }
        .await;
        let value = match outcome {
            Ok(value) => value,
            Err(error) => {
                // Whatever was issued is rolled back; the transaction may already be gone.
                let _ = tx.abort();
                return Err(self.closed_or(error));
            }
        };
        let event = done.next().await;
        if event.type_() == "complete" {
            Ok(value)
        } else {
            let error = tx.error().map_or_else(
                || StorageError::Backend("the transaction was aborted".into()),
                |e| dom_error("committing", &e),
            );
            Err(self.closed_or(error))
        }
    }
}

impl Drop for IdbStore {
    fn drop(&mut self) {
        for event in CLOSING_EVENTS {
            let _ = self
                .connection
                .database
                .remove_event_listener_with_callback(event, self.on_close.as_ref().unchecked_ref());
        }
        self.connection.close();
    }
}

#[async_trait(?Send)]
impl OfflineStore for IdbStore {
    fn key(&self) -> &StoreKey {
        &self.key
    }

    async fn models(&self) -> Result<Vec<ModelSummary>, StorageError> {
        self.read(footprint::models(), store::models).await
    }

    async fn unsynced(&self) -> Result<Unsynced, StorageError> {
        self.read(footprint::unsynced(), store::unsynced).await
    }

    async fn load_model(&self, model: &ModelId) -> Result<Option<ModelState>, StorageError> {
        self.read(footprint::load_model(model), |kv| store::load_model(kv, model)).await
    }

    async fn load_model_head(&self, model: &ModelId) -> Result<Option<ModelState>, StorageError> {
        self.read(footprint::load_model_head(model), |kv| store::load_model_head(kv, model)).await
    }

    async fn pending_page(
        &self,
        model: &ModelId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<PendingOperation>, StorageError> {
        // Two bounded requests (keys and values, `limit` each) instead of the overlay, which
        // would fetch the whole range.
        let (start, end) = store::pending_page_range(model, after, None);
        if start >= end {
            return Ok(Vec::new());
        }
        let count = u32::try_from(limit.max(1)).unwrap_or(u32::MAX);
        let page = async {
            let tx = transaction(self.database()?, &footprint::pending_page(), false)?;
            let pending = object_store(&tx, Table::Pending)?;
            let range = key_range(&Span::new(&start, &end))?
                .ok_or_else(|| StorageError::Backend("a pending page without bounds".into()))?;
            let keys = Pending::new(pending.get_all_keys_with_key_and_limit(&range, count))?;
            let values = Pending::new(pending.get_all_with_key_and_limit(&range, count))?;
            let keys = byte_list(&keys.wait("reading keys").await?, "a key")?;
            let values = byte_list(&values.wait("reading rows").await?, "a stored value")?;
            if keys.len() != values.len() {
                return Err(StorageError::Backend(format!(
                    "{} keys but {} values in one page of pending operations",
                    keys.len(),
                    values.len()
                )));
            }
            keys.iter().zip(&values).map(|(k, v)| store::decode_pending(model, k, v)).collect()
        };
        page.await.map_err(|e| self.closed_or(e))
    }

    async fn subscriptions(&self) -> Result<BTreeSet<ModelId>, StorageError> {
        self.read(footprint::subscriptions(), store::subscriptions).await
    }

    async fn replica_id(&self) -> Result<Option<ReplicaId>, StorageError> {
        self.read(footprint::replica_id(), store::replica_id).await
    }

    async fn identities(&self) -> Result<IdentityCache, StorageError> {
        self.read(footprint::identities(), store::identities).await
    }

    async fn commit_group(&self, batches: Vec<Batch>) -> Result<(), StorageError> {
        if batches.is_empty() {
            return Ok(());
        }
        self.write(footprint::apply(&batches), |kv| store::apply(kv, &batches)).await
    }
}

// The bridge inside one transaction.

/// Runs `logic` through the overlay in `tx`, then issues its writes in `tx`. Does not wait
/// for the transaction to complete, and does not abort it on error: the caller does.
async fn run_in<T>(
    tx: &IdbTransaction,
    footprint: &Footprint,
    logic: impl FnMut(&mut dyn KvWrite) -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let mut source = TxSource { tx };
    let (value, changes) =
        overlay::run(&mut source, footprint.scope, true, &footprint.hints, logic).await?;
    issue_writes(tx, &changes)?;
    Ok(value)
}

/// Reads needs with IndexedDB requests of one transaction.
struct TxSource<'a> {
    tx: &'a IdbTransaction,
}

/// The requests of one need, issued and not yet answered.
enum Fetch<'n> {
    Value(Table, &'n [u8], Pending),
    Keys(Table, &'n Span, Pending),
    Rows(Table, &'n Span, Pending, Pending),
}

impl Source for TxSource<'_> {
    async fn fetch(&mut self, needs: &[Need], known: &mut Known) -> Result<(), StorageError> {
        // Every request goes out before the first is awaited: they run together, and the
        // transaction stays active while any is pending.
        let mut fetches = Vec::with_capacity(needs.len());
        for need in needs {
            let store = object_store(self.tx, need.table())?;
            fetches.push(match need {
                Need::Value(table, key) => {
                    Fetch::Value(*table, key, Pending::new(store.get(&bytes(key)))?)
                }
                Need::Keys(table, span) => {
                    Fetch::Keys(*table, span, Pending::new(get_all_keys(&store, span)?)?)
                }
                Need::Rows(table, span) => Fetch::Rows(
                    *table,
                    span,
                    Pending::new(get_all_keys(&store, span)?)?,
                    Pending::new(get_all(&store, span)?)?,
                ),
            });
        }
        for fetch in fetches {
            match fetch {
                Fetch::Value(table, key, pending) => {
                    let value = pending.wait("reading").await?;
                    let value = if value.is_undefined() {
                        None
                    } else {
                        Some(from_js(&value, "a stored value")?)
                    };
                    known.add_value(table, key.to_vec(), value);
                }
                Fetch::Keys(table, span, pending) => {
                    let keys = byte_list(&pending.wait("reading keys").await?, "a key")?;
                    known.add_keys(table, span.clone(), keys);
                }
                Fetch::Rows(table, span, keys, values) => {
                    // Same transaction, no write in between: both lists are in key order.
                    let keys = byte_list(&keys.wait("reading keys").await?, "a key")?;
                    let values = byte_list(&values.wait("reading rows").await?, "a stored value")?;
                    if keys.len() != values.len() {
                        return Err(StorageError::Backend(format!(
                            "{} keys but {} values in one range of `{}`",
                            keys.len(),
                            values.len(),
                            table.name()
                        )));
                    }
                    known.add_rows(table, span.clone(), keys.into_iter().zip(values).collect());
                }
            }
        }
        Ok(())
    }
}

/// Issues every write of `changes` in `tx`, in the order [`Changes`] prescribes. Their
/// outcome is the transaction's: a failed request aborts it.
fn issue_writes(tx: &IdbTransaction, changes: &Changes) -> Result<(), StorageError> {
    for (table, changes) in changes.by_table() {
        let store = object_store(tx, table)?;
        if changes.cleared {
            store.clear().map_err(|e| js_error("clearing", &e))?;
        }
        for span in &changes.deleted {
            match key_range(span)? {
                Some(range) => store.delete(&range),
                None => store.clear(),
            }
            .map_err(|e| js_error("deleting a range", &e))?;
        }
        for (key, value) in &changes.points {
            match value {
                Some(value) => store.put_with_key(&bytes(value), &bytes(key)),
                None => store.delete(&bytes(key)),
            }
            .map_err(|e| js_error("writing", &e))?;
        }
    }
    Ok(())
}

fn transaction(
    database: &IdbDatabase,
    footprint: &Footprint,
    write: bool,
) -> Result<IdbTransaction, StorageError> {
    let names = Array::new();
    for table in footprint.scope.tables() {
        names.push(&JsValue::from_str(table.name()));
    }
    let result = if write {
        // `durability: "strict"`: `complete` only after the flush to disk (the default lets
        // a browser report it earlier). Through Reflect: transaction options are not a
        // stable web-sys API.
        let options = Object::new();
        Reflect::set(&options, &"durability".into(), &"strict".into())
            .and_then(|_| Reflect::get(database, &"transaction".into()))
            .and_then(|f| f.dyn_into::<Function>())
            .and_then(|f| {
                let args = Array::new();
                args.push(&names);
                args.push(&"readwrite".into());
                args.push(&options);
                f.apply(database, &args)
            })
            .and_then(|tx| tx.dyn_into::<IdbTransaction>())
    } else {
        database.transaction_with_str_sequence_and_mode(&names, IdbTransactionMode::Readonly)
    };
    result.map_err(|error| match dom_name(&error).as_deref() {
        // The connection is closing or closed (a versionchange just arrived).
        Some("InvalidStateError") => StorageError::Closed,
        Some("NotFoundError") => {
            StorageError::Corrupt(format!("an object store is missing: {}", describe(&error)))
        }
        _ => js_error("starting a transaction", &error),
    })
}

fn object_store(tx: &IdbTransaction, table: Table) -> Result<IdbObjectStore, StorageError> {
    tx.object_store(table.name()).map_err(|e| js_error("opening an object store", &e))
}

fn key_range(span: &Span) -> Result<Option<IdbKeyRange>, StorageError> {
    match &span.end {
        None if span.start.is_empty() => Ok(None),
        None => IdbKeyRange::lower_bound(&bytes(&span.start)).map(Some),
        Some(end) => IdbKeyRange::bound_with_lower_open_and_upper_open(
            &bytes(&span.start),
            &bytes(end),
            false,
            true,
        )
        .map(Some),
    }
    .map_err(|e| js_error("building a key range", &e))
}

fn get_all_keys(
    store: &IdbObjectStore,
    span: &Span,
) -> Result<Result<IdbRequest, JsValue>, StorageError> {
    Ok(match key_range(span)? {
        Some(range) => store.get_all_keys_with_key(&range),
        None => store.get_all_keys(),
    })
}

fn get_all(
    store: &IdbObjectStore,
    span: &Span,
) -> Result<Result<IdbRequest, JsValue>, StorageError> {
    Ok(match key_range(span)? {
        Some(range) => store.get_all_with_key(&range),
        None => store.get_all(),
    })
}

// Values.

fn bytes(bytes: &[u8]) -> JsValue {
    Uint8Array::from(bytes).into()
}

/// A key (an `ArrayBuffer`) or a value (a `Uint8Array`) as bytes; anything else is damage.
fn from_js(value: &JsValue, what: &str) -> Result<Vec<u8>, StorageError> {
    if let Some(array) = value.dyn_ref::<Uint8Array>() {
        Ok(array.to_vec())
    } else if let Some(buffer) = value.dyn_ref::<ArrayBuffer>() {
        Ok(Uint8Array::new(buffer).to_vec())
    } else {
        Err(StorageError::Corrupt(format!("{what} is not binary: {}", describe(value))))
    }
}

fn byte_list(list: &JsValue, what: &str) -> Result<Vec<Vec<u8>>, StorageError> {
    let list = list
        .dyn_ref::<Array>()
        .ok_or_else(|| StorageError::Backend(format!("expected a list, got {}", describe(list))))?;
    list.iter().map(|value| from_js(&value, what)).collect()
}

// Errors.

fn dom_name(error: &JsValue) -> Option<String> {
    error.dyn_ref::<DomException>().map(DomException::name)
}

fn describe(value: &JsValue) -> String {
    if let Some(exception) = value.dyn_ref::<DomException>() {
        format!("{}: {}", exception.name(), exception.message())
    } else if let Some(error) = value.dyn_ref::<js_sys::Error>() {
        String::from(error.message())
    } else if let Some(text) = value.as_string() {
        text
    } else {
        format!("{value:?}")
    }
}

fn dom_error(doing: &str, exception: &DomException) -> StorageError {
    let message =
        format!("IndexedDB failed {doing}: {}: {}", exception.name(), exception.message());
    if exception.name() == "QuotaExceededError" {
        StorageError::Io(std::io::Error::new(std::io::ErrorKind::StorageFull, message))
    } else {
        StorageError::Backend(message)
    }
}

fn js_error(doing: &str, error: &JsValue) -> StorageError {
    match error.dyn_ref::<DomException>() {
        Some(exception) => dom_error(doing, exception),
        None => StorageError::Backend(format!("IndexedDB failed {doing}: {}", describe(error))),
    }
}

fn request_error(doing: &str, request: &IdbRequest) -> StorageError {
    match request.error() {
        Ok(Some(exception)) => dom_error(doing, &exception),
        _ => StorageError::Backend(format!("IndexedDB failed {doing}")),
    }
}

// Events and requests as futures.

/// The events of some types fired at one target, queued from the moment it is created (so
/// none is missed before the first poll); the listener goes when this is dropped.
struct Events {
    target: EventTarget,
    types: &'static [&'static str],
    queue: Rc<RefCell<Queue>>,
    listener: Closure<dyn FnMut(Event)>,
}

#[derive(Default)]
struct Queue {
    events: VecDeque<Event>,
    waker: Option<Waker>,
}

impl Events {
    fn listen(
        target: &EventTarget,
        types: &'static [&'static str],
    ) -> Result<Events, StorageError> {
        let queue = Rc::new(RefCell::new(Queue::default()));
        let listener = {
            let queue = queue.clone();
            Closure::<dyn FnMut(Event)>::new(move |event: Event| {
                let waker = {
                    let mut queue = queue.borrow_mut();
                    queue.events.push_back(event);
                    queue.waker.take()
                };
                // Resumes the waiting future in a microtask: still inside this event's
                // dispatch, so a transaction the event belongs to is still active.
                if let Some(waker) = waker {
                    waker.wake();
                }
            })
        };
        for kind in types {
            target
                .add_event_listener_with_callback(kind, listener.as_ref().unchecked_ref())
                .map_err(|e| js_error("listening to events", &e))?;
        }
        Ok(Events { target: target.clone(), types, queue, listener })
    }

    /// The next event.
    async fn next(&self) -> Event {
        std::future::poll_fn(|cx| {
            let mut queue = self.queue.borrow_mut();
            match queue.events.pop_front() {
                Some(event) => Poll::Ready(event),
                None => {
                    queue.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        for kind in self.types {
            let _ = self
                .target
                .remove_event_listener_with_callback(kind, self.listener.as_ref().unchecked_ref());
        }
    }
}

/// The next event, or `None` if `deadline` passes first.
async fn next_before(events: &Events, deadline: Option<&mut JsFuture>) -> Option<Event> {
    let Some(deadline) = deadline else {
        return Some(events.next().await);
    };
    let mut next = pin!(events.next());
    std::future::poll_fn(|cx| {
        if let Poll::Ready(event) = next.as_mut().poll(cx) {
            return Poll::Ready(Some(event));
        }
        if Pin::new(&mut *deadline).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// A timer, through the global `setTimeout` (windows and workers alike).
fn sleep(duration: Duration) -> Result<JsFuture, StorageError> {
    let global = js_sys::global();
    let set_timeout = Reflect::get(&global, &"setTimeout".into())
        .ok()
        .and_then(|f| f.dyn_into::<Function>().ok())
        .ok_or_else(|| StorageError::Backend("no setTimeout in this context".into()))?;
    let millis = JsValue::from_f64(duration.as_secs_f64() * 1000.0);
    let mut failure = None;
    let promise = Promise::new(&mut |resolve, _reject| {
        let args = Array::new();
        args.push(&resolve);
        args.push(&millis);
        if let Err(error) = set_timeout.apply(&global, &args) {
            failure = Some(error);
        }
    });
    match failure {
        Some(error) => Err(js_error("starting a timer", &error)),
        None => Ok(JsFuture::from(promise)),
    }
}

/// One request of a transaction, listened to from the moment it is issued.
struct Pending {
    request: IdbRequest,
    events: Events,
}

impl Pending {
    fn new(issued: Result<IdbRequest, JsValue>) -> Result<Pending, StorageError> {
        let request = issued.map_err(|e| js_error("issuing a request", &e))?;
        let events = Events::listen(&request, &["success", "error"])?;
        Ok(Pending { request, events })
    }

    async fn wait(self, doing: &str) -> Result<JsValue, StorageError> {
        let event = self.events.next().await;
        if event.type_() == "success" {
            self.request.result().map_err(|e| js_error(doing, &e))
        } else {
            Err(request_error(doing, &self.request))
        }
    }
}

fn factory() -> Result<IdbFactory, StorageError> {
    Reflect::get(&js_sys::global(), &"indexedDB".into())
        .ok()
        .and_then(|factory| factory.dyn_into::<IdbFactory>().ok())
        .ok_or_else(|| StorageError::Backend("IndexedDB is not available here".into()))
}

// Opening, upgrading.

/// An open request in progress. If it is given up before it finishes (blocked too long,
/// or its future dropped), `Drop` hands its events to a task that aborts a late upgrade
/// and closes a late connection, so a request nobody waits for changes nothing and holds
/// nothing open.
struct OpenAttempt {
    request: IdbOpenDbRequest,
    events: Option<Events>,
    upgrading: Option<IdbTransaction>,
}

impl Drop for OpenAttempt {
    fn drop(&mut self) {
        if let Some(tx) = self.upgrading.take() {
            let _ = tx.abort();
        }
        if let Some(events) = self.events.take() {
            spawn_local(abandon(self.request.clone(), events));
        }
    }
}

async fn abandon(request: IdbOpenDbRequest, events: Events) {
    loop {
        let event = events.next().await;
        match event.type_().as_str() {
            "upgradeneeded" => {
                if let Some(tx) = request.transaction() {
                    let _ = tx.abort();
                }
            }
            "success" => {
                if let Ok(database) = request.result().and_then(|r| r.dyn_into::<IdbDatabase>()) {
                    database.close();
                }
                return;
            }
            "error" => return,
            _ => {}
        }
    }
}

async fn open_database(
    factory: &IdbFactory,
    name: &str,
    key: &StoreKey,
    supported: u32,
    migrations: &[Migration],
    blocked_timeout: Duration,
) -> Result<IdbDatabase, StorageError> {
    let request = factory.open_with_u32(name, supported).map_err(|e| js_error("opening", &e))?;
    let events = Events::listen(&request, &["success", "error", "blocked", "upgradeneeded"])?;
    let mut attempt = OpenAttempt { request, events: Some(events), upgrading: None };
    // Why we aborted an upgrade: the open request then fails with a bare AbortError.
    let mut failure = None;
    let mut deadline = None;
    loop {
        let events = attempt.events.as_ref().ok_or_else(|| {
            StorageError::Backend("internal error: an open request without listeners".into())
        })?;
        let Some(event) = next_before(events, deadline.as_mut()).await else {
            return Err(StorageError::InUse {
                store: format!(
                    "{name}: upgrading it is blocked by a connection that does not close \
                     (another tab, or code that ignores versionchange); nothing was changed"
                ),
            });
        };
        match event.type_().as_str() {
            "blocked" if deadline.is_none() => deadline = Some(sleep(blocked_timeout)?),
            "upgradeneeded" => {
                deadline = None;
                let tx = attempt.request.transaction().ok_or_else(|| {
                    StorageError::Backend("an upgrade without a transaction".into())
                })?;
                attempt.upgrading = Some(tx.clone());
                let result = upgrade(&attempt.request, &tx, key, supported, migrations).await;
                attempt.upgrading = None;
                if let Err(error) = result {
                    let _ = tx.abort();
                    failure = Some(error);
                }
            }
            "success" => {
                attempt.events = None;
                return attempt
                    .request
                    .result()
                    .and_then(|r| r.dyn_into::<IdbDatabase>())
                    .map_err(|e| js_error("opening", &e));
            }
            "error" => {
                attempt.events = None;
                if let Some(failure) = failure {
                    return Err(failure);
                }
                let error = request_error("opening", &attempt.request);
                let newer =
                    matches!(attempt.request.error(), Ok(Some(e)) if e.name() == "VersionError");
                return Err(if newer {
                    newer_format(factory, name, supported).await
                } else {
                    error
                });
            }
            _ => {}
        }
    }
}

/// The `upgradeneeded` step: creates the object stores (possible only here), then
/// initialises or migrates the store in the upgrade transaction through the bridge.
async fn upgrade(
    request: &IdbOpenDbRequest,
    tx: &IdbTransaction,
    key: &StoreKey,
    supported: u32,
    migrations: &[Migration],
) -> Result<(), StorageError> {
    let database = request
        .result()
        .and_then(|r| r.dyn_into::<IdbDatabase>())
        .map_err(|e| js_error("upgrading", &e))?;
    let stores = database.object_store_names();
    for table in Table::ALL {
        if !stores.contains(table.name()) {
            // Out-of-line keys: the binary keys are given with every put.
            database
                .create_object_store(table.name())
                .map_err(|e| js_error("creating an object store", &e))?;
        }
    }
    run_in(tx, &footprint::prepare(), |kv| store::prepare(kv, key, supported, migrations).map(drop))
        .await
}

/// The error for a database whose version is above `supported`: opens it at its own
/// version to name it, changing nothing.
async fn newer_format(factory: &IdbFactory, name: &str, supported: u32) -> StorageError {
    match current_version(factory, name).await {
        Ok(found) if found > f64::from(supported) => StorageError::NewerFormat {
            found: if found >= f64::from(u32::MAX) { u32::MAX } else { found as u32 },
            supported,
        },
        Ok(found) => StorageError::Backend(format!(
            "database {name} refused version {supported} but has version {found}"
        )),
        Err(error) => error,
    }
}

async fn current_version(factory: &IdbFactory, name: &str) -> Result<f64, StorageError> {
    let request = factory.open(name).map_err(|e| js_error("opening", &e))?;
    let events = Events::listen(&request, &["success", "error", "upgradeneeded"])?;
    loop {
        let event = events.next().await;
        match event.type_().as_str() {
            // The database was deleted meanwhile: do not create an empty one.
            "upgradeneeded" => {
                if let Some(tx) = request.transaction() {
                    let _ = tx.abort();
                }
            }
            "success" => {
                let database = request
                    .result()
                    .and_then(|r| r.dyn_into::<IdbDatabase>())
                    .map_err(|e| js_error("opening", &e))?;
                let version = database.version();
                database.close();
                return Ok(version);
            }
            _ => return Err(request_error("opening", &request)),
        }
    }
}

// The lock.

thread_local! {
    /// Locks of this realm being released, by name: a reopen waits for the release
    /// (Web Locks releases asynchronously) instead of failing with `InUse`.
    static RELEASING: RefCell<BTreeMap<String, Promise>> = const { RefCell::new(BTreeMap::new()) };
    /// Held locks where Web Locks are missing.
    static HELD: RefCell<BTreeSet<String>> = const { RefCell::new(BTreeSet::new()) };
}

/// The exclusive lock of one store's database.
struct StoreLock {
    name: String,
    /// `Some` for a Web Lock: resolving it releases the lock.
    release: Option<(Function, Promise)>,
}

impl StoreLock {
    /// The lock, or `None` if someone else holds it. Never waits for another holder.
    async fn acquire(database: &str) -> Result<Option<StoreLock>, StorageError> {
        let name = format!("concord-storage {database}");
        if let Some(releasing) = RELEASING.with(|r| r.borrow_mut().remove(&name)) {
            let _ = JsFuture::from(releasing).await;
        }
        let Some(locks) = lock_manager() else {
            let fresh = HELD.with(|held| held.borrow_mut().insert(name.clone()));
            return Ok(fresh.then_some(StoreLock { name, release: None }));
        };
        // `request` calls back with the lock (or null: `ifAvailable`) and holds it until
        // the promise the callback returns settles; `granted` carries the resolver of that
        // promise (or false) back here.
        let mut granted_resolver = None;
        let granted = Promise::new(&mut |resolve, _| granted_resolver = Some(resolve));
        let granted_resolver = granted_resolver
            .ok_or_else(|| StorageError::Backend("a promise without a resolver".into()))?;
        let callback = Closure::once_into_js(move |lock: JsValue| -> JsValue {
            if lock.is_null() {
                let _ = granted_resolver.call1(&JsValue::UNDEFINED, &JsValue::FALSE);
                return JsValue::UNDEFINED;
            }
            let mut hold_resolver = None;
            let hold = Promise::new(&mut |resolve, _| hold_resolver = Some(resolve));
            let answer = hold_resolver.map_or(JsValue::FALSE, JsValue::from);
            let _ = granted_resolver.call1(&JsValue::UNDEFINED, &answer);
            hold.into()
        });
        let options = Object::new();
        let released = Reflect::set(&options, &"ifAvailable".into(), &JsValue::TRUE)
            .and_then(|_| Reflect::get(&locks, &"request".into()))
            .and_then(|f| f.dyn_into::<Function>())
            .and_then(|request| {
                let args = Array::new();
                args.push(&name.clone().into());
                args.push(&options);
                args.push(&callback);
                request.apply(&locks, &args)
            })
            .and_then(|p| p.dyn_into::<Promise>())
            .map_err(|e| js_error("requesting the store's lock", &e))?;
        let answer = JsFuture::from(granted)
            .await
            .map_err(|e| js_error("requesting the store's lock", &e))?;
        Ok(answer
            .dyn_into::<Function>()
            .ok()
            .map(|release| StoreLock { name, release: Some((release, released)) }))
    }
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        match self.release.take() {
            Some((release, released)) => {
                let _ = release.call0(&JsValue::UNDEFINED);
                RELEASING.with(|r| r.borrow_mut().insert(self.name.clone(), released));
            }
            None => {
                HELD.with(|held| held.borrow_mut().remove(&self.name));
            }
        }
    }
}

/// `navigator.locks`, in a window or a worker, if present.
fn lock_manager() -> Option<JsValue> {
    let navigator = Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    let locks = Reflect::get(&navigator, &"locks".into()).ok()?;
    (!locks.is_undefined() && !locks.is_null()).then_some(locks)
}

#[cfg(test)]
mod tests {
    //! What only IndexedDB has: upgrades and migrations in the upgrade transaction, a
    //! blocked upgrade, a transaction failing in its write phase. (The contract suite and
    //! the public-API tests are in `tests/indexeddb.rs`.)

    use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

    use super::*;
    use crate::contract::{full_model_batch, key, model_id};
    use crate::encoding::{META_FORMAT, decode, decode_format, encode};
    use crate::records::PendingOperation;

    wasm_bindgen_test_configure!(run_in_browser);

    /// A failure injected after a commit's writes were issued.
    #[derive(Debug, Clone, Copy)]
    pub(super) enum Fault {
        /// A request that fails later (adding an existing key): the transaction aborts.
        Request,
        /// A request that throws when issued: the commit aborts the transaction itself.
        Throw,
    }

    impl IdbStore {
        pub(super) fn inject_fault(&self, tx: &IdbTransaction) -> Result<(), StorageError> {
            let Some(fault) = self.fault.take() else { return Ok(()) };
            let meta = object_store(tx, Table::Meta)?;
            match fault {
                Fault::Request => {
                    meta.add_with_key(&bytes(b"x"), &bytes(META_FORMAT))
                        .map_err(|e| js_error("injecting", &e))?;
                    Ok(())
                }
                Fault::Throw => {
                    // An object is not a valid key: DataError, thrown at once.
                    meta.put_with_key(&bytes(b"x"), &Object::new())
                        .map_err(|e| js_error("injecting", &e))?;
                    Ok(())
                }
            }
        }
    }

    fn adapter(test: &str) -> IdbAdapter {
        let run = js_sys::Date::now();
        IdbAdapter::with_prefix(format!("unit-{test}-{run}:"))
    }

    async fn contents(store: &IdbStore) -> Vec<Option<ModelState>> {
        let mut states = Vec::new();
        for n in 1..=3 {
            states.push(store.load_model(&model_id(n)).await.unwrap());
        }
        states
    }

    #[wasm_bindgen_test]
    async fn a_write_phase_failure_leaves_nothing() {
        for fault in [Fault::Request, Fault::Throw] {
            let adapter = adapter(&format!("fault-{fault:?}"));
            let store = adapter.open_store(&key()).await.unwrap();
            store.commit(full_model_batch(1)).await.unwrap();
            let before = contents(&store).await;
            store.fault.set(Some(fault));
            let result = store.commit_group(vec![full_model_batch(2), full_model_batch(3)]).await;
            assert!(matches!(result, Err(StorageError::Backend(_))), "{fault:?}: {result:?}");
            assert_eq!(contents(&store).await, before, "{fault:?}");
            // The handle works on, and so does a reopened one.
            store.commit(full_model_batch(2)).await.unwrap();
            drop(store);
            let store = adapter.open_store(&key()).await.unwrap();
            assert_eq!(store.models().await.unwrap().len(), 2);
        }
    }

    /// As in the redb tests: a test-only format 4 multiplies every pending seq by 10.
    fn to_format_4(kv: &mut dyn KvWrite) -> Result<(), StorageError> {
        let mut rows = Vec::new();
        kv.scan(Table::Pending, None, &mut |key, value| {
            rows.push((key.to_vec(), value.to_vec()));
            Ok(())
        })?;
        for (key, value) in rows {
            let mut op: PendingOperation = decode(&value)?;
            op.seq *= 10;
            op.through = op.seq;
            kv.delete(Table::Pending, &key)?;
            let mut new_key = key[..key.len() - 8].to_vec();
            new_key.extend_from_slice(&op.seq.to_be_bytes());
            kv.put(Table::Pending, &new_key, &encode(&op)?)?;
        }
        kv.put(Table::Meta, b"migrated", b"yes")
    }

    fn failing_to_format_5(kv: &mut dyn KvWrite) -> Result<(), StorageError> {
        kv.clear(Table::Pending)?;
        kv.put(Table::Meta, b"half-done", b"yes")?;
        Err(StorageError::Backend("migration failed on purpose".into()))
    }

    const TEST_MIGRATIONS: &[Migration] =
        &[Migration { from: 3, run: to_format_4 }, Migration { from: 4, run: failing_to_format_5 }];

    async fn meta(store: &IdbStore, key: &'static [u8]) -> Option<Vec<u8>> {
        let mut footprint = footprint::replica_id();
        footprint.hints.clear();
        store.read(footprint, |kv| kv.get(Table::Meta, key)).await.unwrap()
    }

    #[wasm_bindgen_test]
    async fn commits_ask_for_strict_durability() {
        let store = adapter("durability").open_store(&key()).await.unwrap();
        let footprint = footprint::apply(&[full_model_batch(1)]);
        let tx = transaction(&store.connection.database, &footprint, true).unwrap();
        let durability = Reflect::get(&tx, &"durability".into()).unwrap();
        assert_eq!(durability.as_string().as_deref(), Some("strict"));
        assert_eq!(tx.object_store_names().length(), 5, "only the tables the batch touches");
        let _ = tx.abort();
    }

    #[wasm_bindgen_test]
    async fn migrations_run_in_the_upgrade_transaction() {
        assert_eq!(FORMAT_VERSION, 3, "rewrite this test when format 4 ships");
        let adapter = adapter("migrate");
        {
            let store = adapter.open_store(&key()).await.unwrap();
            store.commit(full_model_batch(1)).await.unwrap();
            store.commit(full_model_batch(2)).await.unwrap();
            assert_eq!(store.connection.database.version(), 3.0);
        }
        {
            let store = adapter.open_with(&key(), 4, TEST_MIGRATIONS).await.unwrap();
            assert_eq!(store.connection.database.version(), 4.0);
            let state = store.load_model(&model_id(1)).await.unwrap().unwrap();
            let seqs: Vec<u64> = state.pending.iter().map(|p| p.seq).collect();
            assert_eq!(seqs, [10, 20]);
            assert_eq!(meta(&store, b"migrated").await.as_deref(), Some(&b"yes"[..]));
            let format = meta(&store, META_FORMAT).await.unwrap();
            assert_eq!(decode_format(&format).unwrap(), 4);
        }
        match adapter.open_store(&key()).await {
            Err(StorageError::NewerFormat { found: 4, supported: 3 }) => {}
            other => panic!("expected NewerFormat, got {other:?}"),
        }
        // 4 -> 5 fails half-way: the upgrade is aborted, version and data stay.
        let error = adapter.open_with(&key(), 5, TEST_MIGRATIONS).await.unwrap_err();
        assert!(
            matches!(&error, StorageError::Backend(m) if m.contains("on purpose")),
            "{error:?}"
        );
        let store = adapter.open_with(&key(), 4, TEST_MIGRATIONS).await.unwrap();
        assert_eq!(store.connection.database.version(), 4.0);
        assert_eq!(store.load_model(&model_id(2)).await.unwrap().unwrap().pending.len(), 2);
        assert_eq!(meta(&store, b"half-done").await, None);
    }

    #[wasm_bindgen_test]
    async fn a_missing_migration_changes_nothing() {
        let adapter = adapter("missing");
        drop(adapter.open_store(&key()).await.unwrap());
        let error = adapter.open_with(&key(), 4, &[]).await.unwrap_err();
        assert!(matches!(error, StorageError::Corrupt(_)), "{error:?}");
        let store = adapter.open_store(&key()).await.unwrap();
        assert_eq!(store.connection.database.version(), 3.0);
    }

    #[wasm_bindgen_test]
    async fn a_blocked_upgrade_gives_up_and_changes_nothing() {
        let adapter = adapter("blocked").blocked_timeout(Duration::from_millis(200));
        let name = adapter.database_name(&key());
        drop(adapter.open_store(&key()).await.unwrap());
        // A connection that ignores versionchange, as old code in another tab might.
        let request = factory().unwrap().open(&name).unwrap();
        let events = Events::listen(&request, &["success"]).unwrap();
        events.next().await;
        let other: IdbDatabase = request.result().unwrap().dyn_into().unwrap();
        match adapter.open_with(&key(), 4, TEST_MIGRATIONS).await {
            Err(StorageError::InUse { store }) => assert!(store.contains("blocked"), "{store}"),
            other => panic!("expected InUse, got {other:?}"),
        }
        // Once the other connection goes, the abandoned upgrade runs and is aborted.
        other.close();
        let store = adapter.open_store(&key()).await.unwrap();
        assert_eq!(store.connection.database.version(), 3.0);
        assert_eq!(meta(&store, b"migrated").await, None);
    }
}
