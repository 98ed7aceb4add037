//! The store's own guarantees: damaged records are reported by model, a file that is not a
//! store is refused and left alone, new stores are private, replica owners never change, and
//! a format 1 store larger than a migration step migrates whole.

use std::path::Path;

use concord_ot::{DiscreteOperation, Document, ElementId, OperationKind, Value, ValueData};
use concord_protocol::{ErrorCode, PermissionGrants, SessionId, User};
use concord_sync::{CommitRecord, RefusalRecord};

use super::*;

const DOMAIN: &str = "acme/notes";

fn model_id(id: &str) -> ModelId {
    ModelId::new(id).unwrap()
}

fn key(model: &str) -> ModelKey {
    ModelKey { domain: Arc::from(DOMAIN), model: model_id(model) }
}

fn notes() -> CollectionId {
    CollectionId::new("notes").unwrap()
}

fn record() -> ModelRecord {
    ModelRecord {
        collection: notes(),
        created_at: Timestamp(1),
        nonce: None,
        creator: Some(UserId("ann".into())),
        grants: PermissionGrants::default(),
    }
}

fn snapshot(version: u64, text: &str) -> ModelSnapshot {
    let root = Value::new(
        ElementId::new(0, 0),
        ValueData::Object(
            [(
                "body".to_string(),
                Value::new(ElementId::new(0, 1), ValueData::String(text.into())),
            )]
            .into(),
        ),
    );
    ModelSnapshot {
        collection: notes(),
        version,
        created_at: Timestamp(1),
        modified_at: Timestamp(1),
        data: Document::new(root).unwrap(),
    }
}

fn operation(version: u64) -> CommittedOperation {
    let kind = OperationKind::StringSplice { index: 0, delete_count: 0, insert: "x".into() };
    CommittedOperation {
        version,
        author: SessionId("s".into()),
        timestamp: Timestamp(version as i64),
        operation: DiscreteOperation::new(ElementId::new(0, 1), kind).into(),
    }
}

/// Runs `writes` in `DOMAIN` through the writer, durably.
async fn write(store: &RedbStore, writes: Vec<Write>) {
    let (writer, thread) = store.start_writer(CancellationToken::new()).unwrap();
    writer.submit(Job { domain: Arc::from(DOMAIN), writes, ..Job::default() }).await.unwrap();
    writer.flush().await.unwrap();
    drop(writer);
    thread.join().unwrap();
}

/// Models `victim` and `bystander`, each with a snapshot at version 2 and operations 1..=3 by
/// replica 7, the collection, a user and replica 7 bound to ann.
async fn two_models(dir: &Path) {
    let store = RedbStore::open(dir).unwrap();
    let mut writes = vec![
        Write::PutCollection { collection: notes(), config: CollectionConfig::default() },
        Write::PutUser {
            user: User { id: UserId("ann".into()), display_name: None, anonymous: false },
        },
        Write::BindReplica { replica: ReplicaId(7), user: UserId("ann".into()) },
    ];
    for model in ["victim", "bystander"] {
        let model = model_id(model);
        writes.push(Write::CreateModel {
            model: model.clone(),
            record: record(),
            snapshot: snapshot(0, ""),
        });
        for version in 1..=3 {
            let operation = operation(version);
            let commit = CommitRecord {
                model: model.clone(),
                operation,
                replica: ReplicaId(7),
                seq: version,
            };
            writes.push(Write::Commit(commit));
        }
        writes.push(Write::Snapshot { model, snapshot: snapshot(2, "xx") });
    }
    write(&store, writes).await;
}

/// Flips the last byte of the record stored under `key` in `table`, as a damaged disk would.
fn damage<K: redb::Key + 'static>(
    dir: &Path,
    table: TableDefinition<K, &[u8]>,
    key: K::SelfType<'_>,
) {
    let db = Database::open(dir.join(FILE_NAME)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(table).unwrap();
        let mut bytes = table.get(&key).unwrap().expect("the record exists").value().to_vec();
        *bytes.last_mut().unwrap() ^= 0x20;
        table.insert(&key, bytes.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

fn loads(store: &RedbStore, model: &str) -> Result<StoredModel, StoreError> {
    match store.load(&key(model))? {
        Loaded::Model(model) => Ok(*model),
        Loaded::Absent { .. } => panic!("{model} is absent"),
    }
}

fn assert_corrupt_model(result: Result<StoredModel, StoreError>, model: &str, what: &str) {
    match result {
        Err(StoreError::CorruptRecord { domain, model: Some(named), record }) => {
            assert_eq!((domain.as_str(), named.as_str()), (DOMAIN, model));
            assert!(record.contains(what), "{record:?} should name {what:?}");
        }
        other => panic!("{model} with a damaged {what} loaded as {other:?}"),
    }
}

#[tokio::test]
async fn a_damaged_record_fails_its_model_and_nothing_else() {
    type Damager = fn(&Path);
    let cases: [(&str, Damager); 5] = [
        ("record", |dir| damage(dir, MODELS, (DOMAIN, "victim"))),
        ("snapshot", |dir| damage(dir, SNAPSHOTS, (DOMAIN, "victim"))),
        ("operation 3", |dir| damage(dir, OPERATIONS, (DOMAIN, "victim", 3))),
        ("last decision", |dir| damage(dir, LAST_DECISIONS, (DOMAIN, "victim", 7))),
        ("collection notes", |dir| damage(dir, COLLECTIONS, (DOMAIN, "notes"))),
    ];
    for (what, damager) in cases {
        let dir = tempfile::tempdir().unwrap();
        two_models(dir.path()).await;
        damager(dir.path());
        let store = RedbStore::open(dir.path()).unwrap();
        assert_corrupt_model(loads(&store, "victim"), "victim", what);
        if what.starts_with("collection") {
            // Every model of the collection needs its settings.
            assert_corrupt_model(loads(&store, "bystander"), "bystander", what);
            continue;
        }
        let bystander = loads(&store, "bystander").unwrap();
        assert_eq!(bystander.snapshot, snapshot(2, "xx"));
        assert_eq!(bystander.operations, vec![operation(3)]);
    }

    // An operation older than the snapshot fails only the reads that reach it.
    let dir = tempfile::tempdir().unwrap();
    two_models(dir.path()).await;
    damage(dir.path(), OPERATIONS, (DOMAIN, "victim", 1));
    let store = RedbStore::open(dir.path()).unwrap();
    assert!(loads(&store, "victim").is_ok());
    assert_eq!(
        store.operations(&key("victim"), 1, 3, 10).unwrap(),
        vec![operation(2), operation(3)]
    );
    match store.operations(&key("victim"), 0, 3, 10) {
        Err(StoreError::CorruptRecord { model: Some(model), record, .. }) => {
            assert_eq!(model.as_str(), "victim");
            assert!(record.contains("operation 1"), "{record}");
        }
        other => panic!("a damaged operation was read as {other:?}"),
    }
    assert_eq!(store.operations(&key("bystander"), 0, 3, 10).unwrap().len(), 3);
    drop(store);

    // Records of no model name their domain.
    damage(dir.path(), REPLICA_OWNERS, (DOMAIN, 7));
    damage(dir.path(), USERS, (DOMAIN, "ann"));
    let store = RedbStore::open(dir.path()).unwrap();
    assert!(matches!(
        store.replica_owner(DOMAIN, ReplicaId(7)),
        Err(StoreError::CorruptRecord { model: None, .. })
    ));
    assert!(matches!(
        store.user(DOMAIN, &UserId("ann".into())),
        Err(StoreError::CorruptRecord { model: None, .. })
    ));
}

#[tokio::test]
async fn a_replica_keeps_its_first_owner() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    let bind = |replica, user: &str| Write::BindReplica {
        replica: ReplicaId(replica),
        user: UserId(user.into()),
    };
    assert_eq!(store.replica_owner(DOMAIN, ReplicaId(1)).unwrap(), None);
    // Within one transaction and across transactions, the first binding stays.
    write(&store, vec![bind(1, "ann"), bind(1, "bob"), bind(2, "bob")]).await;
    write(&store, vec![bind(2, "ann")]).await;
    assert_eq!(store.replica_owner(DOMAIN, ReplicaId(1)).unwrap(), Some(UserId("ann".into())));
    assert_eq!(store.replica_owner(DOMAIN, ReplicaId(2)).unwrap(), Some(UserId("bob".into())));
    assert_eq!(store.replica_owner("acme/other", ReplicaId(1)).unwrap(), None);
    drop(store);
    // Durably.
    let store = RedbStore::open(dir.path()).unwrap();
    assert_eq!(store.replica_owner(DOMAIN, ReplicaId(1)).unwrap(), Some(UserId("ann".into())));
}

fn assert_not_a_store(dir: &Path, reason: &str) {
    match RedbStore::open(dir) {
        Err(StoreError::NotAStore { path, reason: found }) => {
            assert_eq!(path, dir.join(FILE_NAME));
            assert!(found.contains(reason), "{found:?} should say {reason:?}");
        }
        Ok(_) => panic!("opened a file that is not a store ({reason})"),
        Err(other) => panic!("refused with {other:?}, not as a file that is not a store"),
    }
}

#[tokio::test]
async fn a_file_that_is_not_a_store_is_refused_and_left_alone() {
    // A store truncated to nothing.
    let dir = tempfile::tempdir().unwrap();
    two_models(dir.path()).await;
    let file = dir.path().join(FILE_NAME);
    std::fs::File::options().write(true).open(&file).unwrap().set_len(0).unwrap();
    assert_not_a_store(dir.path(), "empty");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 0, "the file was changed");

    // Something else entirely.
    std::fs::write(&file, "not a database, but someone's notes\n".repeat(200)).unwrap();
    assert_not_a_store(dir.path(), "magic number");
    assert!(std::fs::read_to_string(&file).unwrap().starts_with("not a database"));

    // Another program's redb database.
    std::fs::remove_file(&file).unwrap();
    {
        let db = Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        let theirs: TableDefinition<&str, &str> = TableDefinition::new("theirs");
        txn.open_table(theirs).unwrap().insert("k", "v").unwrap();
        txn.commit().unwrap();
    }
    assert_not_a_store(dir.path(), "without a Concord format");

    // A store of a newer format.
    std::fs::remove_file(&file).unwrap();
    drop(RedbStore::open(dir.path()).unwrap());
    {
        let db = Database::open(&file).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format", FORMAT_VERSION + 1).unwrap();
        txn.commit().unwrap();
    }
    assert!(matches!(
        RedbStore::open(dir.path()),
        Err(StoreError::NewerFormat { found, supported: FORMAT_VERSION }) if found == FORMAT_VERSION + 1
    ));
}

#[cfg(unix)]
#[test]
fn a_new_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data").join("server");
    drop(RedbStore::open(&dir).unwrap());
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "the data directory");
    assert_eq!(mode(&parent.path().join("data")), 0o700, "a parent it created");
    assert_eq!(mode(&dir.join(FILE_NAME)), 0o600, "the store file");
    assert_eq!(mode(&dir.join(wal::FILE_NAME)), 0o600, "the store's log");
    // Nothing but the store and its log is left in the directory.
    let mut names: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, [FILE_NAME, wal::FILE_NAME].map(std::ffi::OsString::from));
}

/// Format 1 as it was written: plain postcard records and a tuple `replicas` table.
mod v1 {
    use super::*;

    pub(super) const MODELS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("models");
    pub(super) const SNAPSHOTS: TableDefinition<(&str, &str), &[u8]> =
        TableDefinition::new("snapshots");
    pub(super) const OPERATIONS: TableDefinition<(&str, &str, u64), &[u8]> =
        TableDefinition::new("operations");
    pub(super) const REPLICAS: TableDefinition<(&str, &str, u64), (u64, u64, i64)> =
        TableDefinition::new("replicas");

    pub(super) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
        postcard::to_stdvec(value).unwrap()
    }
}

#[test]
fn a_format_1_store_larger_than_a_migration_step_migrates_whole() {
    const MODEL_COUNT: u64 = 1_100;
    const OPERATION_COUNT: u64 = 2_500;
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            txn.open_table(META).unwrap().insert("format", 1).unwrap();
            let mut models = txn.open_table(v1::MODELS).unwrap();
            let mut snapshots = txn.open_table(v1::SNAPSHOTS).unwrap();
            let mut operations = txn.open_table(v1::OPERATIONS).unwrap();
            let mut replicas = txn.open_table(v1::REPLICAS).unwrap();
            for n in 0..MODEL_COUNT {
                let model = format!("m{n:05}");
                let k = (DOMAIN, model.as_str());
                models.insert(k, v1::encode(&record()).as_slice()).unwrap();
                snapshots.insert(k, v1::encode(&snapshot(0, &model)).as_slice()).unwrap();
                replicas.insert((DOMAIN, "big", n), (n + 1, n, n as i64)).unwrap();
            }
            models.insert((DOMAIN, "big"), v1::encode(&record()).as_slice()).unwrap();
            snapshots.insert((DOMAIN, "big"), v1::encode(&snapshot(0, "")).as_slice()).unwrap();
            for version in 1..=OPERATION_COUNT {
                let bytes = v1::encode(&operation(version));
                operations.insert((DOMAIN, "big", version), bytes.as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let store = RedbStore::open(dir.path()).unwrap();
    let big = loads(&store, "big").unwrap();
    assert_eq!(big.operations, (1..=OPERATION_COUNT).map(operation).collect::<Vec<_>>());
    assert_eq!(big.last_decisions.len() as u64, MODEL_COUNT);
    for n in [0, 1_023, 1_024, MODEL_COUNT - 1] {
        let commit = Commit { version: n, timestamp: Timestamp(n as i64) };
        assert_eq!(big.last_decisions[&ReplicaId(n)], (n + 1, Decision::Committed(commit)));
    }
    for n in [0, 1_023, 1_024, 1_025, MODEL_COUNT - 1] {
        let model = format!("m{n:05}");
        assert_eq!(loads(&store, &model).unwrap().snapshot, snapshot(0, &model));
    }
    drop(store);
    // The old table is gone and the file records the current format.
    let db = Database::open(dir.path().join(FILE_NAME)).unwrap();
    let txn = db.begin_read().unwrap();
    assert!(matches!(txn.open_table(v1::REPLICAS), Err(TableError::TableDoesNotExist(_))));
    assert_eq!(
        txn.open_table(META).unwrap().get("format").unwrap().unwrap().value(),
        FORMAT_VERSION
    );
}

#[tokio::test]
async fn a_replicas_last_decision_is_its_commit_or_its_refusal() {
    let dir = tempfile::tempdir().unwrap();
    two_models(dir.path()).await;
    let store = RedbStore::open(dir.path()).unwrap();
    let refusal = |replica, seq, code| {
        Write::Refusal(RefusalRecord {
            model: model_id("victim"),
            replica: ReplicaId(replica),
            seq,
            code,
        })
    };
    write(&store, vec![refusal(7, 4, ErrorCode::INVALID_OPERATION), refusal(8, 1, ErrorCode(999))])
        .await;
    let decisions = loads(&store, "victim").unwrap().last_decisions;
    assert_eq!(decisions[&ReplicaId(7)], (4, Decision::Refused(ErrorCode::INVALID_OPERATION)));
    assert_eq!(decisions[&ReplicaId(8)], (1, Decision::Refused(ErrorCode(999))));
    // A commit after a refusal replaces it; the other model is untouched.
    let commit = CommitRecord {
        model: model_id("victim"),
        operation: operation(4),
        replica: ReplicaId(8),
        seq: 2,
    };
    write(&store, vec![Write::Commit(commit)]).await;
    drop(store);
    let store = RedbStore::open(dir.path()).unwrap();
    let decisions = loads(&store, "victim").unwrap().last_decisions;
    let committed = Decision::Committed(Commit { version: 4, timestamp: Timestamp(4) });
    assert_eq!(decisions[&ReplicaId(8)], (2, committed));
    let bystander = loads(&store, "bystander").unwrap().last_decisions;
    let committed = Decision::Committed(Commit { version: 3, timestamp: Timestamp(3) });
    assert_eq!(bystander, BTreeMap::from([(ReplicaId(7), (3, committed))]));
}

#[test]
fn a_damaged_last_commit_of_format_2_is_still_reported_after_the_migration() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/server-v2.redb");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixture, dir.path().join(FILE_NAME)).unwrap();
    let v2_last_commits: TableDefinition<(&str, &str, u64), &[u8]> =
        TableDefinition::new("last_commits");
    damage(dir.path(), v2_last_commits, ("acme/notes", "doc", 11));
    let store = RedbStore::open(dir.path()).unwrap();
    let key = ModelKey { domain: Arc::from("acme/notes"), model: model_id("doc") };
    match store.load(&key) {
        Err(StoreError::CorruptRecord { model: Some(model), record, .. }) => {
            assert_eq!(model.as_str(), "doc");
            assert!(record.contains("replica 11's last decision"), "{record}");
        }
        other => panic!("a damaged last commit was migrated into {other:?}"),
    }
    let plain = ModelKey { domain: Arc::from("acme/notes"), model: model_id("plain") };
    assert!(store.load(&plain).is_ok(), "the other models are served");
}

/// Copies the store files in `from` to a new directory as a crash would leave them: what is
/// on disk, not what the open store holds in memory.
fn crash_image(from: &Path, files: &[&str]) -> tempfile::TempDir {
    let image = tempfile::tempdir().unwrap();
    for file in files {
        std::fs::copy(from.join(file), image.path().join(file)).unwrap();
    }
    image
}

/// `model`'s last version in the store in `dir`, if it exists.
fn last_version(dir: &Path, model: &str) -> Option<u64> {
    match RedbStore::open(dir).unwrap().load(&key(model)).unwrap() {
        Loaded::Model(stored) => {
            Some(stored.operations.last().map_or(stored.snapshot.version, |o| o.version))
        }
        Loaded::Absent { .. } => None,
    }
}

fn commit_writes(model: &str, version: u64) -> Vec<Write> {
    let commit = CommitRecord {
        model: model_id(model),
        operation: operation(version),
        replica: ReplicaId(7),
        seq: version,
    };
    vec![Write::Commit(commit)]
}

/// `writes` in `DOMAIN`, as the one part of a batch.
fn batch(writes: Vec<Write>) -> [DomainWrites; 1] {
    [DomainWrites { domain: Arc::from(DOMAIN), writes }]
}

fn commit_in(store: &RedbStore, writes: Vec<Write>) {
    store.commit_logged(&batch(writes)).unwrap();
}

/// A new store in `dir` holding the model `doc`, empty, at version 0.
fn store_with_doc(dir: &Path) -> RedbStore {
    let store = RedbStore::open(dir).unwrap();
    let create =
        Write::CreateModel { model: model_id("doc"), record: record(), snapshot: snapshot(0, "") };
    commit_in(&store, vec![create]);
    store
}

/// [`commit_writes`] with an operation of another author: a different one at `version`.
fn other_commit_writes(model: &str, version: u64) -> Vec<Write> {
    let mut writes = commit_writes(model, version);
    let Write::Commit(commit) = &mut writes[0] else { unreachable!("one commit") };
    commit.operation.author = SessionId("another".into());
    writes
}

#[test]
fn a_crash_loses_no_logged_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_doc(dir.path());
    for version in 1..=20 {
        commit_in(&store, commit_writes("doc", version));
    }
    let files = [FILE_NAME, wal::FILE_NAME];
    let crashed = crash_image(dir.path(), &files);
    // redb's own file does not hold them yet: only the log does.
    let without_log = crash_image(dir.path(), &[FILE_NAME]);
    assert_eq!(last_version(without_log.path(), "doc"), None);
    assert_eq!(last_version(crashed.path(), "doc"), Some(20));

    // After a recovery the log starts again where it left off, and a second crash keeps
    // what came after.
    let recovered = RedbStore::open(crashed.path()).unwrap();
    commit_in(&recovered, commit_writes("doc", 21));
    let crashed_again = crash_image(crashed.path(), &files);
    assert_eq!(last_version(crashed_again.path(), "doc"), Some(21));
    drop(store);
}

#[test]
fn a_full_log_is_checkpointed_and_written_again_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open(dir.path()).unwrap();
    // Snapshots of about 1 MiB: the log takes seven, the eighth makes redb durable, and
    // the log starts again; one larger than the whole log goes to redb directly.
    let big = |version: u64, bytes: usize| {
        let text = "x".repeat(bytes);
        let model = model_id(&format!("doc{version}"));
        vec![Write::CreateModel { model, record: record(), snapshot: snapshot(0, &text) }]
    };
    for version in 1..=12 {
        commit_in(&store, big(version, 1 << 20));
    }
    // The first eight were made durable in redb by the checkpoint, the next four only in
    // the log.
    let without_log = crash_image(dir.path(), &[FILE_NAME]);
    assert_eq!(last_version(without_log.path(), "doc8"), Some(0));
    assert_eq!(last_version(without_log.path(), "doc9"), None);
    commit_in(&store, big(13, wal::LIMIT_BYTES as usize + 1));
    commit_in(&store, big(14, 10));
    let log = std::fs::metadata(dir.path().join(wal::FILE_NAME)).unwrap().len();
    assert!(log <= wal::LIMIT_BYTES + (1 << 20), "the log grew to {log} bytes");
    let crashed = crash_image(dir.path(), &[FILE_NAME, wal::FILE_NAME]);
    for version in 1..=14 {
        assert_eq!(last_version(crashed.path(), &format!("doc{version}")), Some(0), "doc{version}");
    }
    drop(store);
}

#[test]
fn a_store_file_older_than_its_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_doc(dir.path());
    let old = crash_image(dir.path(), &[FILE_NAME]);
    // A commit larger than the log goes to redb durably and the log starts again: the
    // next record is the third commit, at the log's start.
    let huge = snapshot(0, &"x".repeat(wal::LIMIT_BYTES as usize));
    commit_in(&store, vec![Write::Snapshot { model: model_id("doc"), snapshot: huge }]);
    commit_in(&store, commit_writes("doc", 1));
    // The older store file, beside the newer log, lacks the first two commits: refused
    // rather than opened with a hole in its history.
    std::fs::copy(dir.path().join(wal::FILE_NAME), old.path().join(wal::FILE_NAME)).unwrap();
    match RedbStore::open(old.path()) {
        Err(StoreError::Corrupt(why)) => assert!(why.contains("older than its log"), "{why}"),
        other => panic!("opened: {:?}", other.map(|_| ())),
    }
    drop(store);
}

#[test]
fn a_read_begun_after_a_commit_is_logged_waits_until_it_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_doc(dir.path());
    let logged = batch(commit_writes("doc", 1));
    // Logged, so the writer may acknowledge it, but not yet in redb.
    assert_eq!(store.log_commit(&logged).unwrap(), Logged::Unapplied);
    let (read, answer) = std::sync::mpsc::channel();
    let reader = store.clone();
    let reading = std::thread::spawn(move || {
        let loaded = reader.load(&key("doc"));
        read.send(()).unwrap();
        loaded
    });
    // The read would see the model without its acknowledged commit: it waits instead.
    let waited = answer.recv_timeout(Duration::from_millis(200));
    assert!(waited.is_err(), "a read went ahead of a logged commit");
    store.apply_logged(&logged).unwrap();
    match reading.join().unwrap().unwrap() {
        Loaded::Model(stored) => assert_eq!(stored.operations.last().unwrap().version, 1),
        Loaded::Absent { .. } => panic!("the model is gone"),
    }
}

#[test]
fn a_taken_version_is_refused_before_it_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_doc(dir.path());
    commit_in(&store, commit_writes("doc", 1));
    let log_bytes = || std::fs::read(dir.path().join(wal::FILE_NAME)).unwrap();
    let before = log_bytes();
    // A different operation where the store holds one, and two different ones at the same
    // new version in one batch: each refused whole, with nothing logged.
    let refused = [
        other_commit_writes("doc", 1),
        [commit_writes("doc", 2), other_commit_writes("doc", 2)].concat(),
        [commit_writes("doc", 2), other_commit_writes("doc", 1)].concat(),
    ];
    for writes in refused {
        match store.log_commit(&batch(writes)) {
            Err(StoreError::VersionTaken { .. }) => {}
            other => panic!("not refused: {other:?}"),
        }
    }
    assert_eq!(log_bytes(), before, "a refused commit reached the log");
    // The same operation again is no conflict, in the store or twice in one batch.
    let again =
        [commit_writes("doc", 1), commit_writes("doc", 2), commit_writes("doc", 2)].concat();
    commit_in(&store, again);
    let crashed = crash_image(dir.path(), &[FILE_NAME, wal::FILE_NAME]);
    assert_eq!(last_version(crashed.path(), "doc"), Some(2));
    drop(store);
}

#[test]
fn a_logged_commit_that_fails_to_apply_fails_every_read_and_a_restart_applies_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_doc(dir.path());
    commit_in(&store, commit_writes("doc", 1));
    let logged = batch(commit_writes("doc", 2));
    assert_eq!(store.log_commit(&logged).unwrap(), Logged::Unapplied);
    // Applying fails (here: handed a batch that conflicts with the store, as no caller
    // does): redb lacks a durable commit, so reads and commits fail from then on.
    let conflicting = batch(other_commit_writes("doc", 1));
    assert!(matches!(store.apply_logged(&conflicting), Err(StoreError::Backend(_))));
    // Reads and the next commit are refused alike, saying why.
    let failed = "an earlier commit failed inside the database";
    assert!(matches!(store.load(&key("doc")), Err(StoreError::Backend(m)) if m == failed));
    assert!(matches!(store.log_commit(&logged), Err(StoreError::Backend(m)) if m == failed));
    // The log has it: the store as a crash left it applies it at the next start.
    let crashed = crash_image(dir.path(), &[FILE_NAME, wal::FILE_NAME]);
    assert_eq!(last_version(crashed.path(), "doc"), Some(2));
    drop(store);
}

/// The embedded store in `dir`, as `concord store` opens it.
fn location(dir: &Path) -> crate::StoreLocation {
    crate::StoreLocation { data_dir: dir.to_owned(), store: None, indexes: BTreeMap::new() }
}

/// `concord store check` and `drop-model`, on the embedded store.
#[tokio::test]
async fn a_check_names_the_damaged_models_and_only_one_not_served_is_dropped() {
    use crate::maintenance::{Damage, MaintenanceError, check_store, drop_damaged_model};
    let dir = tempfile::tempdir().unwrap();
    let at = location(dir.path());
    assert!(matches!(check_store(&at, |_| {}).await, Err(MaintenanceError::NoStore(_))));
    assert!(!dir.path().join(FILE_NAME).exists(), "a check created a store");

    two_models(dir.path()).await;
    let mut progress = Vec::new();
    let check = check_store(&at, |read| progress.push(read)).await.unwrap();
    assert_eq!((check.models, check.damaged.as_slice(), progress), (2, &[][..], vec![2]));

    // Damage older than the snapshot: the model is served, so it is reported, not dropped.
    damage(dir.path(), OPERATIONS, (DOMAIN, "victim", 1));
    let check = check_store(&at, |_| {}).await.unwrap();
    let [damaged] = check.damaged.as_slice() else { panic!("{check:?}") };
    assert_eq!((damaged.domain.as_str(), damaged.model.as_str()), (DOMAIN, "victim"));
    assert_eq!(damaged.kind, Damage::History);
    assert!(damaged.damage.contains("operation 1"), "{damaged:?}");
    let refused = drop_damaged_model(&at, DOMAIN, &model_id("victim"), Timestamp(9)).await;
    assert!(matches!(refused, Err(MaintenanceError::StillServed { .. })), "{refused:?}");

    // Its record damaged too, it is not served: dropped, everywhere.
    damage(dir.path(), MODELS, (DOMAIN, "victim"));
    let check = check_store(&at, |_| {}).await.unwrap();
    let [damaged] = check.damaged.as_slice() else { panic!("{check:?}") };
    assert_eq!(damaged.kind, Damage::Model);
    assert!(damaged.damage.contains("record"), "{damaged:?}");
    for (model, refusal) in [("bystander", "NotDamaged"), ("nobody", "NoModel")] {
        let refused = drop_damaged_model(&at, DOMAIN, &model_id(model), Timestamp(9)).await;
        assert!(format!("{refused:?}").starts_with(&format!("Err({refusal}")), "{refused:?}");
    }
    let dropped = drop_damaged_model(&at, DOMAIN, &model_id("victim"), Timestamp(9)).await;
    assert!(dropped.unwrap().contains("record"));

    let check = check_store(&at, |_| {}).await.unwrap();
    assert_eq!((check.models, check.damaged.as_slice()), (1, &[][..]));

    let store = RedbStore::open(dir.path()).unwrap();
    assert!(matches!(store.load(&key("victim")).unwrap(), Loaded::Absent { deleted: true }));
    assert_eq!(loads(&store, "bystander").unwrap().snapshot, snapshot(2, "xx"));
    assert!(store.operations(&key("victim"), 0, u64::MAX, 10).unwrap().is_empty());
    // The damaged record could not say its collection: the model left it all the same.
    let txn = store.db.begin_read().unwrap();
    let members = txn.open_table(COLLECTION_MODELS).unwrap();
    let members: Vec<String> =
        members.iter().unwrap().map(|entry| entry.unwrap().0.value().2.to_owned()).collect();
    assert_eq!(members, ["bystander"]);
    drop((members, txn, store));
    // A damaged collection record fails every model of the collection, whole as they are:
    // they are reported, and none is dropped.
    damage(dir.path(), COLLECTIONS, (DOMAIN, "notes"));
    let check = check_store(&at, |_| {}).await.unwrap();
    let [damaged] = check.damaged.as_slice() else { panic!("{check:?}") };
    assert_eq!((damaged.model.as_str(), damaged.kind), ("bystander", Damage::Collection));
    let refused = drop_damaged_model(&at, DOMAIN, &model_id("bystander"), Timestamp(9)).await;
    assert!(matches!(refused, Err(MaintenanceError::CollectionDamaged { .. })), "{refused:?}");
}

/// `concord store rebuild-snapshot`, on the embedded store: a damaged snapshot is put back
/// from the newest whole checkpoint, and the model loads as it was.
#[tokio::test]
async fn a_damaged_snapshot_is_rebuilt_from_the_newest_whole_checkpoint() {
    use crate::maintenance::{Damage, MaintenanceError, check_store, rebuild_snapshot};
    let dir = tempfile::tempdir().unwrap();
    let at = location(dir.path());
    two_models(dir.path()).await;
    let whole = loads(&RedbStore::open(dir.path()).unwrap(), "victim").unwrap();

    damage(dir.path(), SNAPSHOTS, (DOMAIN, "victim"));
    let check = check_store(&at, |_| {}).await.unwrap();
    let [damaged] = check.damaged.as_slice() else { panic!("{check:?}") };
    assert_eq!((damaged.model.as_str(), damaged.kind), ("victim", Damage::Snapshot));
    assert!(damaged.damage.contains("snapshot"), "{damaged:?}");
    for (model, refusal) in [("bystander", "NotDamaged"), ("nobody", "NoModel")] {
        let refused = rebuild_snapshot(&at, DOMAIN, &model_id(model)).await;
        assert!(format!("{refused:?}").starts_with(&format!("Err({refusal}")), "{refused:?}");
    }

    // Checkpoint 2 is the snapshot's copy; operation 3 is replayed after it.
    let rebuilt = rebuild_snapshot(&at, DOMAIN, &model_id("victim")).await.unwrap();
    assert_eq!((rebuilt.checkpoint, rebuilt.replayed), (2, 1));
    assert!(rebuilt.passed_over.is_empty() && rebuilt.damage.contains("snapshot"), "{rebuilt:?}");
    assert_eq!(check_store(&at, |_| {}).await.unwrap().damaged, []);
    let store = RedbStore::open(dir.path()).unwrap();
    assert_eq!(loads(&store, "victim").unwrap(), whole);
    drop(store);

    // Its checkpoint damaged too: the one before it serves, with more to replay, and the
    // check still reports the damaged checkpoint as history.
    damage(dir.path(), SNAPSHOTS, (DOMAIN, "victim"));
    damage(dir.path(), CHECKPOINTS, (DOMAIN, "victim", 2));
    let rebuilt = rebuild_snapshot(&at, DOMAIN, &model_id("victim")).await.unwrap();
    assert_eq!((rebuilt.checkpoint, rebuilt.replayed), (0, 3));
    let [passed] = rebuilt.passed_over.as_slice() else { panic!("{rebuilt:?}") };
    assert!(passed.contains("checkpoint 2"), "{passed}");
    let store = RedbStore::open(dir.path()).unwrap();
    let loaded = loads(&store, "victim").unwrap();
    assert_eq!((loaded.snapshot.version, loaded.operations.len()), (0, 3));
    assert_eq!((loaded.record, loaded.last_decisions), (whole.record, whole.last_decisions));
    drop(store);
    let check = check_store(&at, |_| {}).await.unwrap();
    let [damaged] = check.damaged.as_slice() else { panic!("{check:?}") };
    assert_eq!(damaged.kind, Damage::History);
    assert!(damaged.damage.contains("checkpoint 2"), "{damaged:?}");

    // With no whole checkpoint left, it cannot be rebuilt, and nothing is written.
    damage(dir.path(), SNAPSHOTS, (DOMAIN, "victim"));
    damage(dir.path(), CHECKPOINTS, (DOMAIN, "victim", 0));
    let refused = rebuild_snapshot(&at, DOMAIN, &model_id("victim")).await;
    let Err(MaintenanceError::CannotRebuild { reason, .. }) = refused else {
        panic!("{refused:?}")
    };
    assert!(reason.contains("checkpoint 2") && reason.contains("checkpoint 0"), "{reason}");
    let check = check_store(&at, |_| {}).await.unwrap();
    assert_eq!(check.damaged[0].kind, Damage::Snapshot, "{check:?}");
    // A record of the model's own damaged is not its snapshot's to rebuild.
    damage(dir.path(), MODELS, (DOMAIN, "bystander"));
    let refused = rebuild_snapshot(&at, DOMAIN, &model_id("bystander")).await;
    assert!(matches!(refused, Err(MaintenanceError::SnapshotWhole { .. })), "{refused:?}");
}
