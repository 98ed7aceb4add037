//! Backing up the embedded store while its server runs ([`ServerStore::back_up`]): every
//! table is copied, entry by entry, from one read transaction into a new store file. A read
//! sees a whole state of what was applied, and redb keeps that state's pages while it is read,
//! so commits go on meanwhile; the copy is a store file that opens on its own, without the
//! log (it records the last commit it holds, as the store does).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{ReadTransaction, TableDefinition, TableError, WriteTransaction};

use super::query::{COLLECTION_MODELS, INDEX_ENTRIES, INDEXES, MODEL_INDEX_KEYS};
use super::{
    CHECKPOINTS, COLLECTIONS, DELETED, IDENTITIES, LAST_DECISIONS, META, MODELS, OPERATION_USERS,
    OPERATIONS, REPLICA_OWNERS, RedbStore, SNAPSHOTS, StoreError, USERS, backend,
    create_private_database, create_private_dir,
};

/// A copy of the store ([`ServerStore::back_up`](super::ServerStore::back_up)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    /// The copy: `concord-<unix millis>.redb`, readable by the owner only.
    pub path: PathBuf,
    pub bytes: u64,
    /// How long writing it took (commits went on meanwhile).
    pub took: Duration,
}

impl RedbStore {
    /// Copies the store as the last applied commit left it into a new file in `dir`.
    pub(super) fn back_up(&self, dir: &Path) -> Result<Backup, StoreError> {
        let started = Instant::now();
        let from = self.begin_read()?;
        create_private_dir(dir)?;
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
        let path = dir.join(backup_name(millis));
        let temporary = dir.join(format!("{}.partial", backup_name(millis)));
        let written = copy_into(&from, &temporary).and_then(|()| {
            std::fs::rename(&temporary, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(std::fs::metadata(&path)?.len())
        });
        if written.is_err() {
            let _ = std::fs::remove_file(&temporary);
        }
        Ok(Backup { path, bytes: written?, took: started.elapsed() })
    }
}

/// The file name of a backup written at `millis` (Unix time).
fn backup_name(millis: u128) -> String {
    format!("concord-{millis}.redb")
}

/// When the backup named `name` was written ([`backup_name`]), if it is one.
pub(crate) fn backup_written_at(name: &str) -> Option<u128> {
    name.strip_prefix("concord-")?.strip_suffix(".redb")?.parse().ok()
}

/// Writes every table `from` reads into a new store file at `path` (0600), committed
/// durably.
fn copy_into(from: &ReadTransaction, path: &Path) -> Result<(), StoreError> {
    let db = create_private_database(path)?;
    let to = db.begin_write().map_err(backend)?;
    copy(from, &to, META)?;
    copy(from, &to, MODELS)?;
    copy(from, &to, SNAPSHOTS)?;
    copy(from, &to, OPERATIONS)?;
    copy(from, &to, LAST_DECISIONS)?;
    copy(from, &to, DELETED)?;
    copy(from, &to, COLLECTIONS)?;
    copy(from, &to, USERS)?;
    copy(from, &to, REPLICA_OWNERS)?;
    copy(from, &to, CHECKPOINTS)?;
    copy(from, &to, OPERATION_USERS)?;
    copy(from, &to, IDENTITIES)?;
    copy(from, &to, COLLECTION_MODELS)?;
    copy(from, &to, INDEX_ENTRIES)?;
    copy(from, &to, MODEL_INDEX_KEYS)?;
    copy(from, &to, INDEXES)?;
    to.commit().map_err(backend)?;
    db.close().map_err(backend)
}

/// Copies one table, entry by entry (a table the store does not have is not created).
fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
    from: &ReadTransaction,
    to: &WriteTransaction,
    table: TableDefinition<K, V>,
) -> Result<(), StoreError> {
    let source = match from.open_table(table) {
        Ok(source) => source,
        Err(TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(error) => return Err(backend(error)),
    };
    let mut target = to.open_table(table).map_err(backend)?;
    for entry in redb::ReadableTable::iter(&source).map_err(backend)? {
        let (key, value) = entry.map_err(backend)?;
        target.insert(key.value(), value.value()).map_err(backend)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableHandle};

    use super::super::{FILE_NAME, fuzzing};
    use super::*;

    /// Every table, with its rows (the names and row counts of a store file's tables).
    fn tables(path: &Path) -> Vec<(String, u64)> {
        let db = Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let mut tables: Vec<(String, u64)> = txn
            .list_tables()
            .unwrap()
            .map(|handle| {
                let name = handle.name().to_owned();
                (name, txn.open_untyped_table(handle).unwrap().len().unwrap())
            })
            .collect();
        tables.sort();
        tables
    }

    /// The sample store has a record in every table: a table added to the store but not to
    /// the backup fails here.
    #[test]
    fn a_backup_holds_every_table_of_the_store_whole() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = fuzzing::sample_store_file(&dir.path().join("sample")).unwrap();
        let live = dir.path().join("live");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::write(live.join(FILE_NAME), &bytes).unwrap();
        let backup = {
            let store = RedbStore::open_indexed(&live, &fuzzing::sample_indexes()).unwrap();
            store.back_up(&live.join("backups")).unwrap()
        };
        let expected = tables(&live.join(FILE_NAME));
        assert!(expected.iter().all(|(_, rows)| *rows > 0), "{expected:?}");
        assert_eq!(tables(&backup.path), expected);
        let name = backup.path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(backup_written_at(&name).is_some(), "{name}");
    }
}
