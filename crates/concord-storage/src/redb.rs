//! The redb backend (feature `redb`, native only): one redb file per store.
//!
//! - Durable: every commit is a redb write transaction with `Durability::Immediate`, which
//!   returns only after the data is flushed (fsync). [`OfflineStore::commit_group`] puts
//!   several batches in one transaction, so they share one flush.
//! - Exclusive: the file is opened in redb's default `ExclusiveWriter` mode, which holds an
//!   OS lock on it. A second opener, in this process or another, gets
//!   [`StorageError::InUse`] at once. (redb's shared modes would let a second process in;
//!   the client's model of one store owner per user does not want that.)
//! - Versioned: the store's format version is checked on open; older formats are migrated
//!   in the opening transaction, newer ones refused.
//!
//! - Damage is an error: the open checks every page's checksum, so a file damaged since it
//!   was written is refused; and redb panics on some damage instead of reporting it, so
//!   every call into it is guarded too. A damaged file gives [`StorageError::Corrupt`], never
//!   a panic in the client (the `store_file` fuzz target).
//!
//! The redb API is synchronous: the async methods run it on the calling thread. A client
//! that must not block its executor calls them from a blocking-capable thread.

use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::adapter::{OfflineStore, StorageAdapter};
use crate::encoding::Table;
use crate::error::StorageError;
use crate::records::StoreKey;
use crate::store::{self, KvRead, KvStore, KvWrite, Migration, Visit};

type Def = TableDefinition<'static, &'static [u8], &'static [u8]>;

fn definition(table: Table) -> Def {
    TableDefinition::new(table.name())
}

/// Maps any redb error to ours.
fn from_redb(error: impl Into<redb::Error>) -> StorageError {
    match error.into() {
        redb::Error::Io(io) => StorageError::Io(io),
        redb::Error::Corrupted(message) => StorageError::Corrupt(message),
        redb::Error::UpgradeRequired(version) => {
            StorageError::Corrupt(format!("redb file format {version} needs a manual upgrade"))
        }
        other => StorageError::Backend(other.to_string()),
    }
}

/// Runs `f`, which calls into redb, reporting a panic inside it as a damaged store file.
fn guarded<T>(f: impl FnOnce() -> Result<T, StorageError>) -> Result<T, StorageError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(damage)?
}

/// The error for a panic inside redb.
fn damage(panic: Box<dyn std::any::Any + Send>) -> StorageError {
    let cause = (panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    StorageError::Corrupt(format!("the store file is damaged: {cause}"))
}

/// A redb database that never takes the process down when it is closed. Closing one that
/// redb panicked in panics again, more than once, and a panic while another unwinds aborts
/// the process. So a database that panicked ([`Db::guarded`]), or that is dropped during a
/// panic, is left unclosed: the OS closes the file, and redb repairs an unclean close at the
/// next open. A close that panics by itself is caught.
struct Db {
    database: Option<Database>,
    damaged: std::sync::atomic::AtomicBool,
}

impl Db {
    fn new(database: Database) -> Db {
        Db { database: Some(database), damaged: Default::default() }
    }

    /// [`guarded`], remembering a panic so that the database is not closed.
    fn guarded<T>(&self, f: impl FnOnce() -> Result<T, StorageError>) -> Result<T, StorageError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
            self.damaged.store(true, std::sync::atomic::Ordering::Relaxed);
            damage(panic)
        })?
    }
}

impl std::ops::Deref for Db {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.database.as_ref().expect("taken only when dropped")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let Some(database) = self.database.take() else { return };
        if std::thread::panicking() || *self.damaged.get_mut() {
            std::mem::forget(database);
        } else {
            // Closing writes the allocator's state, which may meet damage nothing read before.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(database)));
        }
    }
}

/// A table handle that is forgotten, not dropped, while a panic unwinds: its destructor
/// takes a lock of the transaction that a panic inside redb (opening another table of a
/// damaged file, say) may have poisoned, and a second panic while the first unwinds aborts
/// the process (found by the `store_file` fuzz target).
struct Unwound<T>(Option<T>);

impl<T> Unwound<T> {
    fn new(value: T) -> Unwound<T> {
        Unwound(Some(value))
    }
}

impl<T> std::ops::Deref for Unwound<T> {
    type Target = T;

    fn deref(&self) -> &T {
        self.0.as_ref().expect("taken only when dropped")
    }
}

impl<T> std::ops::DerefMut for Unwound<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.as_mut().expect("taken only when dropped")
    }
}

impl<T> Drop for Unwound<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.take()
            && std::thread::panicking()
        {
            std::mem::forget(value);
        }
    }
}

/// Creates stores as files in one directory, named after their key.
#[derive(Debug, Clone)]
pub struct RedbAdapter {
    dir: PathBuf,
}

impl RedbAdapter {
    /// Stores go in `dir`, created on first open if missing.
    pub fn new(dir: impl Into<PathBuf>) -> RedbAdapter {
        RedbAdapter { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of the store for `key`.
    pub fn path(&self, key: &StoreKey) -> PathBuf {
        self.dir.join(file_name(key))
    }
}

/// A file name for a key: the server and the user with every byte outside `[A-Za-z0-9._-]`
/// escaped as `%XX`, joined by `~`. Names too long for file systems are shortened and end
/// with a hash of the whole key; the store records its key, so a collision is detected
/// ([`StorageError::WrongStore`]), not mixed up.
fn file_name(key: &StoreKey) -> String {
    fn escape(out: &mut String, s: &str) {
        for byte in s.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-') {
                out.push(byte as char);
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    let mut name = String::new();
    escape(&mut name, &key.server);
    name.push('~');
    escape(&mut name, &key.user);
    if name.len() > 180 {
        // FNV-1a, 64 bits: stable across versions and platforms, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.server.bytes().chain([0]).chain(key.user.bytes()) {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        name.truncate(160);
        while !name.is_char_boundary(name.len()) {
            name.pop();
        }
        name.push_str(&format!("-{hash:016x}"));
    }
    name.push_str(".redb");
    name
}

#[async_trait]
impl StorageAdapter for RedbAdapter {
    async fn open(&self, key: &StoreKey) -> Result<Box<dyn OfflineStore>, StorageError> {
        std::fs::create_dir_all(&self.dir)?;
        Ok(Box::new(RedbStore::open(self.path(key), key)?))
    }

    async fn destroy(&self, key: &StoreKey) -> Result<(), StorageError> {
        let path = self.path(key);
        if !path.exists() {
            return Ok(());
        }
        // Holding the lock proves that no one has the store open. A file too damaged to open
        // is not open elsewhere either: redb takes the lock before it reads the file.
        match guarded(|| open_database(&path)) {
            Ok(database) => drop(Db::new(database)),
            Err(StorageError::Corrupt(_)) => {}
            Err(error) => return Err(error),
        }
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error.into()),
            _ => Ok(()),
        }
    }
}

/// The most redb keeps of the file in its own cache (its default is 1 GiB). The engine holds
/// the models it works on in memory and reads each from the store once, when it loads it, so
/// a large cache would mostly keep pages of models long released — for the life of the
/// process, growing with the number of models synced (`docs/benchmarks.md`, P4); the
/// operating system's page cache serves those reads as well. 1 MiB keeps the upper levels of
/// the tables' trees.
const CACHE_BYTES: usize = 1024 * 1024;

fn open_database(path: &Path) -> Result<Database, StorageError> {
    // Every page's checksum is checked and the allocator's state rebuilt at open (about
    // 0.45 ms per MiB of a cached file; 4 ms for 10,000 models): a file damaged since redb
    // wrote it is refused as corrupt here, where a plain open trusts it and redb may panic on
    // it later.
    Database::builder()
        .set_cache_size(CACHE_BYTES)
        .set_check_integrity_on_open(true)
        .create(path)
        .map_err(|error| match error {
            DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                StorageError::InUse { store: path.display().to_string() }
            }
            // At open, these are the file's fault, not the medium's: redb reports a file
            // that is not a database ("magic number mismatch"), or one too short to be one,
            // as I/O errors of these kinds.
            DatabaseError::Storage(redb::StorageError::Io(io))
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                StorageError::Corrupt(format!("not a valid store file: {io}"))
            }
            other => from_redb(other),
        })
}

/// One open redb store. Dropping it closes the file and releases the lock.
pub struct RedbStore {
    key: StoreKey,
    path: PathBuf,
    database: Db,
}

impl fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedbStore")
            .field("key", &self.key)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens (creating if missing) the store in the file `path`, for `key`; see
    /// [`StorageAdapter::open`] for the contract.
    pub fn open(path: impl Into<PathBuf>, key: &StoreKey) -> Result<RedbStore, StorageError> {
        RedbStore::open_with(path.into(), key, crate::encoding::FORMAT_VERSION, store::MIGRATIONS)
    }

    pub(crate) fn open_with(
        path: PathBuf,
        key: &StoreKey,
        supported: u32,
        migrations: &[Migration],
    ) -> Result<RedbStore, StorageError> {
        let database = Db::new(guarded(|| open_database(&path))?);
        let store = RedbStore { key: key.clone(), path, database };
        store.write(|kv| store::prepare(kv, key, supported, migrations).map(drop))?;
        Ok(store)
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_unguarded<T>(
        &self,
        f: impl FnOnce(&mut dyn KvWrite) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut transaction = self.database.begin_write().map_err(from_redb)?;
        transaction.set_durability(Durability::Immediate).map_err(from_redb)?;
        let result = (|| {
            let mut kv = WriteKv {
                tables: Table::ALL
                    .iter()
                    .map(|&t| transaction.open_table(definition(t)).map(Unwound::new))
                    .collect::<Result<_, _>>()
                    .map_err(from_redb)?,
            };
            f(&mut kv)
        })();
        match result {
            Ok(value) => {
                transaction.commit().map_err(from_redb)?;
                Ok(value)
            }
            Err(error) => {
                transaction.abort().map_err(from_redb)?;
                Err(error)
            }
        }
    }
}

impl KvStore for RedbStore {
    fn store_key(&self) -> &StoreKey {
        &self.key
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut dyn KvWrite) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.database.guarded(|| self.write_unguarded(f))
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&dyn KvRead) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.database.guarded(|| {
            let transaction = self.database.begin_read().map_err(from_redb)?;
            let kv = ReadKv {
                tables: Table::ALL
                    .iter()
                    .map(|&t| transaction.open_table(definition(t)).map(Unwound::new))
                    .collect::<Result<_, _>>()
                    .map_err(from_redb)?,
            };
            f(&kv)
        })
    }
}

fn get(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    key: &[u8],
) -> Result<Option<Vec<u8>>, StorageError> {
    Ok(table.get(key).map_err(from_redb)?.map(|guard| guard.value().to_vec()))
}

fn scan(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    range: Option<(&[u8], &[u8])>,
    visit: Visit<'_>,
) -> Result<(), StorageError> {
    let rows = match range {
        Some((start, end)) => table.range::<&[u8]>(start..end),
        None => table.range::<&[u8]>(..),
    }
    .map_err(from_redb)?;
    for row in rows {
        let (key, value) = row.map_err(from_redb)?;
        visit(key.value(), value.value())?;
    }
    Ok(())
}

struct ReadKv {
    tables: Vec<Unwound<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>>,
}

impl KvRead for ReadKv {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        get(&*self.tables[table.index()], key)
    }

    fn scan(
        &self,
        table: Table,
        range: Option<(&[u8], &[u8])>,
        visit: Visit<'_>,
    ) -> Result<(), StorageError> {
        scan(&*self.tables[table.index()], range, visit)
    }
}

struct WriteKv<'t> {
    tables: Vec<Unwound<redb::Table<'t, &'static [u8], &'static [u8]>>>,
}

impl KvRead for WriteKv<'_> {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        get(&*self.tables[table.index()], key)
    }

    fn scan(
        &self,
        table: Table,
        range: Option<(&[u8], &[u8])>,
        visit: Visit<'_>,
    ) -> Result<(), StorageError> {
        scan(&*self.tables[table.index()], range, visit)
    }
}

impl KvWrite for WriteKv<'_> {
    fn put(&mut self, table: Table, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.tables[table.index()].insert(key, value).map_err(from_redb)?;
        Ok(())
    }

    fn delete(&mut self, table: Table, key: &[u8]) -> Result<(), StorageError> {
        self.tables[table.index()].remove(key).map_err(from_redb)?;
        Ok(())
    }

    fn delete_range(
        &mut self,
        table: Table,
        start: &[u8],
        end: &[u8],
    ) -> Result<u64, StorageError> {
        let mut removed = 0;
        self.tables[table.index()]
            .retain_in::<&[u8], _>(start..end, |_, _| {
                removed += 1;
                false
            })
            .map_err(from_redb)?;
        Ok(removed)
    }

    fn clear(&mut self, table: Table) -> Result<(), StorageError> {
        self.tables[table.index()].retain(|_, _| false).map_err(from_redb)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{full_model_batch, key, model_id};
    use crate::encoding::{FORMAT_VERSION, META_FORMAT, decode_format, encode_format};
    use crate::records::PendingOperation;

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        pollster::block_on(future)
    }

    fn stored_format(path: &Path) -> u32 {
        let database = open_database(path).unwrap();
        let transaction = database.begin_read().unwrap();
        let meta = transaction.open_table(definition(Table::Meta)).unwrap();
        decode_format(&get(&meta, META_FORMAT).unwrap().unwrap()).unwrap()
    }

    #[test]
    fn a_new_store_records_the_current_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        drop(RedbStore::open(&path, &key()).unwrap());
        assert_eq!(stored_format(&path), FORMAT_VERSION);
    }

    #[test]
    fn a_newer_format_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = RedbStore::open(&path, &key()).unwrap();
            block_on(store.commit(full_model_batch(1))).unwrap();
            store
                .write(|kv| kv.put(Table::Meta, META_FORMAT, &encode_format(FORMAT_VERSION + 1)))
                .unwrap();
        }
        match RedbStore::open(&path, &key()) {
            Err(StorageError::NewerFormat { found, supported }) => {
                assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
            }
            other => panic!("expected NewerFormat, got {other:?}"),
        }
        let message = RedbStore::open(&path, &key()).unwrap_err().to_string();
        assert_eq!(
            message,
            format!(
                "store format version {} is newer than the supported version {}",
                FORMAT_VERSION + 1,
                FORMAT_VERSION
            )
        );
        assert_eq!(stored_format(&path), FORMAT_VERSION + 1);
    }

    #[test]
    fn a_store_of_another_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        drop(RedbStore::open(&path, &key()).unwrap());
        let bob = StoreKey::new(key().server, "bob");
        match RedbStore::open(&path, &bob) {
            Err(StorageError::WrongStore { expected, found }) => {
                assert_eq!((expected, found), (bob, key()));
            }
            other => panic!("expected WrongStore, got {other:?}"),
        }
    }

    /// A test-only format 4: every pending operation's sequence number is multiplied by 10,
    /// and a marker is stored. (Real migrations come with committed fixture files of the
    /// format they migrate from.)
    fn to_format_4(kv: &mut dyn KvWrite) -> Result<(), StorageError> {
        let mut rows = Vec::new();
        kv.scan(Table::Pending, None, &mut |key, value| {
            rows.push((key.to_vec(), value.to_vec()));
            Ok(())
        })?;
        for (key, value) in rows {
            let mut op: PendingOperation = crate::encoding::decode(&value)?;
            op.seq *= 10;
            op.through = op.seq;
            kv.delete(Table::Pending, &key)?;
            let mut new_key = key[..key.len() - 8].to_vec();
            new_key.extend_from_slice(&op.seq.to_be_bytes());
            kv.put(Table::Pending, &new_key, &crate::encoding::encode(&op)?)?;
        }
        kv.put(Table::Meta, b"migrated", b"yes")
    }

    /// Fails after changing things, to show that a failed migration changes nothing.
    fn failing_to_format_5(kv: &mut dyn KvWrite) -> Result<(), StorageError> {
        kv.clear(Table::Pending)?;
        kv.put(Table::Meta, b"half-done", b"yes")?;
        Err(StorageError::Backend("migration failed on purpose".into()))
    }

    const TEST_MIGRATIONS: &[Migration] =
        &[Migration { from: 3, run: to_format_4 }, Migration { from: 4, run: failing_to_format_5 }];

    #[test]
    fn an_older_format_is_migrated_in_one_transaction() {
        assert_eq!(FORMAT_VERSION, 3, "rewrite this test when format 4 ships");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        {
            let store = RedbStore::open(&path, &key()).unwrap();
            block_on(store.commit(full_model_batch(1))).unwrap();
            block_on(store.commit(full_model_batch(2))).unwrap();
        }
        // Format 3 -> 4: pending operations survive, rewritten.
        {
            let store = RedbStore::open_with(path.clone(), &key(), 4, TEST_MIGRATIONS).unwrap();
            let state = block_on(store.load_model(&model_id(1))).unwrap().unwrap();
            let seqs: Vec<u64> = state.pending.iter().map(|p| p.seq).collect();
            assert_eq!(seqs, [10, 20]);
            assert_eq!(state.server_operations.len(), 2);
            let marker = store.read(|kv| kv.get(Table::Meta, b"migrated")).unwrap();
            assert_eq!(marker.as_deref(), Some(&b"yes"[..]));
        }
        assert_eq!(stored_format(&path), 4);
        // The current version now refuses it as newer.
        assert!(matches!(
            RedbStore::open(&path, &key()),
            Err(StorageError::NewerFormat { found: 4, supported: 3 })
        ));
        // Format 4 -> 5 fails half-way: nothing of it is kept.
        let error = RedbStore::open_with(path.clone(), &key(), 5, TEST_MIGRATIONS).unwrap_err();
        assert!(matches!(error, StorageError::Backend(_)), "{error:?}");
        let store = RedbStore::open_with(path.clone(), &key(), 4, TEST_MIGRATIONS).unwrap();
        let state = block_on(store.load_model(&model_id(2))).unwrap().unwrap();
        assert_eq!(state.pending.len(), 2);
        assert_eq!(store.read(|kv| kv.get(Table::Meta, b"half-done")).unwrap(), None);
        let format = store.read(|kv| kv.get(Table::Meta, META_FORMAT)).unwrap().unwrap();
        assert_eq!(decode_format(&format).unwrap(), 4);
    }

    #[test]
    fn a_missing_migration_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        drop(RedbStore::open(&path, &key()).unwrap());
        let next = crate::encoding::FORMAT_VERSION + 1;
        let error = RedbStore::open_with(path.clone(), &key(), next, &[]).unwrap_err();
        assert!(matches!(error, StorageError::Corrupt(_)), "{error:?}");
        assert_eq!(stored_format(&path), crate::encoding::FORMAT_VERSION);
    }

    #[test]
    fn a_damaged_store_is_refused_and_can_be_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let adapter = RedbAdapter::new(dir.path());
        let store = block_on(adapter.open(&key())).unwrap();
        block_on(store.commit_group(vec![full_model_batch(1)])).unwrap();
        drop(store);
        // A byte changed in every page: the open's check of the pages' checksums fails.
        let path = adapter.path(&key());
        let mut bytes = std::fs::read(&path).unwrap();
        for page in bytes.chunks_mut(4096) {
            let last = page.len() - 1;
            page[last / 2] ^= 0x5a;
        }
        std::fs::write(&path, bytes).unwrap();
        match block_on(adapter.open(&key())) {
            Err(StorageError::Corrupt(_)) => {}
            other => panic!("expected a corrupt store, got {other:?}"),
        }
        block_on(adapter.destroy(&key())).unwrap();
        assert!(!path.exists());
        let store = block_on(adapter.open(&key())).unwrap();
        assert!(block_on(store.models()).unwrap().is_empty(), "a new, empty store");
    }

    #[test]
    fn file_names_are_safe_and_distinct() {
        let name = file_name(&StoreKey::new("wss://example.test:443/a", "alice"));
        assert_eq!(name, "wss%3A%2F%2Fexample.test%3A443%2Fa~alice.redb");
        assert_ne!(file_name(&StoreKey::new("a~b", "c")), file_name(&StoreKey::new("a", "b~c")));
        let long = file_name(&StoreKey::new("s".repeat(500), "u"));
        assert!(long.len() < 200, "{long}");
        assert_ne!(long, file_name(&StoreKey::new("s".repeat(501), "u")));
    }
}
