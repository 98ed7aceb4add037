//! The server's store keeps reading what earlier versions wrote.
//!
//! `tests/fixtures/server-v<N>.redb` is a `concord.redb` written by store format `N`, with a
//! row in every table: models (with and without a creation nonce and a creator, with grants),
//! snapshots, the operation log, the last commit per replica, a deleted id, collections and
//! users, in two domains; from format 2 on, replicas bound to users too; from format 3 on,
//! submissions refused for good; from format 4 on, checkpoints and the users of operations;
//! from format 5 on, each collection's models and an index (on `n` in `notes`); from format
//! 6 on, users' identities.
//! For every format up to the current one (the version a new
//! store records) a fixture must exist; the test opens a copy through [`RedbStore`], checks that the
//! file then records the current format, and compares everything it reads with the values
//! written out below. So changing how a table or a record is stored fails here until the
//! format is bumped, a migration added and a fixture of the new format committed.
//!
//! A fixture is written once, by the format that names it, and never again: regenerating an
//! existing version's fixture is never the fix for a failing test (it would hide exactly the
//! incompatibility this test is for). When format `N + 1` ships: add its migration, add
//! `writes` and `expected` for `N + 1` (the old ones stay as they are), then write the new
//! fixture with
//!
//! ```text
//! cargo test -p concord-server --lib store_format_tests::write_fixture -- --ignored
//! ```
//!
//! which writes only the current format's fixture, and refuses if it exists.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use concord_ot::{
    DiscreteOperation, Document, ElementId, Operation, OperationKind, ReplicaId, Value, ValueData,
};
use concord_protocol::{
    CollectionId, Commit, CommittedOperation, CreationNonce, ErrorCode, ModelId, ModelSnapshot,
    PermissionGrants, Permissions, SessionId, Timestamp, User, UserId,
};
use concord_sync::host::{CollectionConfig, Loaded, ModelRecord, StoredModel, Write};
use concord_sync::{CommitRecord, Decision, RefusalRecord, Sequencer};
use tokio_util::sync::CancellationToken;

use crate::store::{Job, RedbStore};
use crate::types::ModelKey;

/// The store's file in its data directory.
const FILE_NAME: &str = "concord.redb";

fn fixture(version: u64) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/server-v{version}.redb"))
}

/// The format a store file records, read straight from the file (`meta`, `format`). Read
/// only: even a plain open rewrites a redb file's header, and a fixture must never change.
fn recorded_format(file: &Path) -> u64 {
    use redb::ReadableDatabase;
    let meta = redb::TableDefinition::<&str, u64>::new("meta");
    let database = redb::ReadOnlyDatabase::open(file).expect("a redb file");
    let transaction = database.begin_read().expect("read");
    let table = transaction.open_table(meta).expect("the meta table");
    table.get("format").expect("get").expect("a format version").value()
}

/// The format this version of the server writes: what a new store records.
fn current_format() -> u64 {
    let dir = tempfile::tempdir().unwrap();
    drop(RedbStore::open(dir.path()).unwrap());
    recorded_format(&dir.path().join(FILE_NAME))
}

#[test]
fn every_format_has_a_fixture_that_reads_as_expected() {
    let current = current_format();
    for version in 1..=current {
        let path = fixture(version);
        assert!(
            path.exists(),
            "no fixture of format {version}: commit one (see this file's header)"
        );
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(recorded_format(&path), version, "{} holds another format", path.display());
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(&path, dir.path().join(FILE_NAME)).unwrap();
        // Opened with the index declared: built on open for the older formats.
        let store = RedbStore::open_indexed(dir.path(), &v5::indexes())
            .unwrap_or_else(|e| panic!("format {version} does not open: {e}"));
        if version < 4 {
            v4::check_migrated(&store);
        }
        if version < 5 {
            v5::check_migrated(&store);
        }
        if version < 6 {
            v6::check_migrated(&store);
        }
        match version {
            1 => v1::check(&store),
            2 => v2::check(&store),
            3 => v3::check(&store),
            4 => v4::check(&store),
            5 => v5::check(&store),
            // Format 7 holds what format 6 did: only the log beside the file is new.
            6 | 7 => v6::check(&store),
            _ => panic!("write out what the format {version} fixture holds"),
        }
        drop(store);
        let copy = dir.path().join(FILE_NAME);
        assert_eq!(recorded_format(&copy), current, "format {version} was not migrated");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "the test changed {}", path.display());
    }
}

#[tokio::test]
async fn the_generator_writes_what_the_current_fixture_holds() {
    assert_eq!(current_format(), 7, "write and check the new format's contents here");
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path()).await;
    v6::check(&RedbStore::open_indexed(dir.path(), &v5::indexes()).unwrap());
}

/// Writes the current format's contents through the store's writer.
async fn write_store(dir: &Path) {
    let store = RedbStore::open_indexed(dir, &v5::indexes()).unwrap();
    let (writer, thread) = store.start_writer(CancellationToken::new()).unwrap();
    // Each step is made durable before the next is queued, so that each is one transaction
    // whatever the timing (the writer groups what is queued meanwhile): the file comes out
    // the same every run.
    for (domain, writes) in v6::writes() {
        writer.submit(Job { domain: Arc::from(domain), writes, ..Job::default() }).await.unwrap();
        writer.flush().await.unwrap();
    }
    drop(writer);
    thread.join().unwrap();
    drop(store);
    // Compaction only makes the file small; it does not change what it holds.
    let mut database = redb::Database::open(dir.join(FILE_NAME)).unwrap();
    while database.compact().unwrap() {}
}

/// Writes the current format's fixture. Never overwrites one: see this file's header.
#[tokio::test]
#[ignore = "writes a fixture file; run by hand when a new format ships"]
async fn write_fixture() {
    let version = current_format();
    let path = fixture(version);
    assert!(
        !path.exists(),
        "{} exists: a fixture is never regenerated (see this file's header)",
        path.display()
    );
    let dir = tempfile::tempdir().unwrap();
    write_store(dir.path()).await;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::copy(dir.path().join(FILE_NAME), &path).unwrap();
    assert_eq!(recorded_format(&path), version);
}

/// Short constructors for the literal values below.
fn id(replica: u64, counter: u64) -> ElementId {
    ElementId::new(replica, counter)
}

fn value(id: ElementId, data: ValueData) -> Value {
    Value::new(id, data)
}

fn object(id: ElementId, entries: Vec<(&str, Value)>) -> Value {
    value(id, ValueData::Object(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn key(domain: &str, model: &str) -> ModelKey {
    ModelKey { domain: Arc::from(domain), model: ModelId::new(model).unwrap() }
}

fn user(id: &str) -> UserId {
    UserId(id.into())
}

/// Format 1, the first.
mod v1 {
    use super::*;

    const NOTES: &str = "acme/notes";
    const OTHER: &str = "other/main";

    fn notes() -> CollectionId {
        CollectionId::new("notes").unwrap()
    }

    fn snapshot(version: u64, root: Value) -> ModelSnapshot {
        ModelSnapshot {
            collection: notes(),
            version,
            created_at: Timestamp(1_700_000_000_000),
            modified_at: Timestamp(1_700_000_000_000 + version as i64),
            data: Document::new(root).unwrap(),
        }
    }

    /// `doc` at version 0: `{"title": "", "count": 0}`, made by the server (replica 0).
    fn doc_v0() -> Value {
        object(
            id(0, 0),
            vec![
                ("title", value(id(0, 1), ValueData::String(String::new()))),
                ("count", value(id(0, 2), ValueData::Number(0.0))),
            ],
        )
    }

    /// `doc` at version 2: `{"title": "Hi", "count": 2}`.
    fn doc_v2() -> Value {
        object(
            id(0, 0),
            vec![
                ("title", value(id(0, 1), ValueData::String("Hi".into()))),
                ("count", value(id(0, 2), ValueData::Number(2.0))),
            ],
        )
    }

    /// Versions 1..=4 of `doc`, by replicas 11 and 12: a real history from `doc_v0`.
    fn doc_operations() -> Vec<(ReplicaId, u64, CommittedOperation)> {
        let op = |target, kind| DiscreteOperation::new(target, kind);
        let committed = |version: u64, author: &str, operation: Operation| CommittedOperation {
            version,
            author: SessionId(author.into()),
            timestamp: Timestamp(1_700_000_000_000 + version as i64),
            operation,
        };
        let insert = |index, text: &str| OperationKind::StringSplice {
            index,
            delete_count: 0,
            insert: text.into(),
        };
        vec![
            (ReplicaId(11), 1, committed(1, "s-ann", op(id(0, 1), insert(0, "Hi")).into())),
            (
                ReplicaId(12),
                1,
                committed(
                    2,
                    "s-bob",
                    op(id(0, 2), OperationKind::NumberDelta { delta: 2.0 }).into(),
                ),
            ),
            (
                ReplicaId(11),
                2,
                committed(
                    3,
                    "s-ann",
                    op(
                        id(0, 0),
                        OperationKind::ObjectAddProperty {
                            key: "done".into(),
                            value: value(id(11, 0), ValueData::Boolean(true)),
                        },
                    )
                    .into(),
                ),
            ),
            (
                ReplicaId(12),
                5,
                committed(
                    4,
                    "s-bob",
                    Operation::Compound(vec![
                        op(id(0, 1), insert(2, "!")),
                        op(id(0, 2), OperationKind::NumberSet { value: 5.0 }),
                    ]),
                ),
            ),
        ]
    }

    /// A root with every kind of value.
    fn every_kind() -> Value {
        object(
            id(0, 0),
            vec![
                ("text", value(id(0, 1), ValueData::String("héllo ✓".into()))),
                (
                    "list",
                    value(
                        id(0, 2),
                        ValueData::Array(vec![
                            value(id(0, 3), ValueData::Number(-0.5)),
                            value(id(0, 4), ValueData::Boolean(false)),
                            value(id(0, 5), ValueData::Null),
                        ]),
                    ),
                ),
                ("when", value(id(0, 6), ValueData::Date(1_767_225_600_000))),
                ("nested", object(id(0, 7), vec![])),
            ],
        )
    }

    fn doc_record() -> ModelRecord {
        ModelRecord {
            collection: notes(),
            created_at: Timestamp(1_700_000_000_000),
            nonce: Some(CreationNonce(*b"fixture-nonce-01")),
            creator: Some(user("ann")),
            grants: PermissionGrants {
                override_collection: false,
                world: Permissions::NONE,
                users: BTreeMap::from([(user("ann"), Permissions::ALL)]),
            },
        }
    }

    /// `doc`'s record after its grants were changed.
    fn doc_record_regranted() -> ModelRecord {
        let mut record = doc_record();
        record.grants = PermissionGrants {
            override_collection: true,
            world: Permissions { read: true, write: false, remove: false, manage: false },
            users: BTreeMap::from([
                (user("ann"), Permissions::ALL),
                (user("bob"), Permissions::ALL),
            ]),
        };
        record
    }

    fn plain_record() -> ModelRecord {
        ModelRecord {
            collection: notes(),
            created_at: Timestamp(1_600_000_000_000),
            nonce: None,
            creator: None,
            grants: PermissionGrants::default(),
        }
    }

    fn restricted() -> CollectionConfig {
        CollectionConfig {
            world: Permissions { read: true, write: false, remove: false, manage: false },
            users: BTreeMap::from([(user("ann"), Permissions::ALL)]),
            world_create: false,
            creators: vec![user("ann"), user("bob")],
        }
    }

    fn users() -> Vec<User> {
        vec![
            User { id: user("ann"), display_name: Some("Ann".into()), anonymous: false },
            User { id: user("anon-1"), display_name: None, anonymous: true },
        ]
    }

    /// The steps the generator writes, each one transaction in one domain, as the server
    /// would.
    pub(super) fn writes() -> Vec<(&'static str, Vec<Write>)> {
        let doc = ModelId::new("doc").unwrap();
        let mut steps = vec![
            (
                NOTES,
                vec![
                    Write::PutCollection {
                        collection: notes(),
                        config: CollectionConfig::default(),
                    },
                    Write::CreateModel {
                        model: doc.clone(),
                        record: doc_record(),
                        snapshot: snapshot(0, doc_v0()),
                    },
                ],
            ),
            (NOTES, vec![Write::PutUser { user: users()[0].clone() }]),
            (NOTES, vec![Write::PutUser { user: users()[1].clone() }]),
        ];
        for (replica, seq, operation) in doc_operations() {
            let record = CommitRecord { model: doc.clone(), operation, replica, seq };
            steps.push((NOTES, vec![Write::Commit(record)]));
            if seq == 1 && replica == ReplicaId(12) {
                let snapshot = snapshot(2, doc_v2());
                steps.push((NOTES, vec![Write::Snapshot { model: doc.clone(), snapshot }]));
            }
        }
        steps.push((NOTES, vec![Write::SetGrants { model: doc, record: doc_record_regranted() }]));
        steps.push((
            NOTES,
            vec![Write::CreateModel {
                model: ModelId::new("plain").unwrap(),
                record: plain_record(),
                snapshot: snapshot(0, every_kind()),
            }],
        ));
        let gone = ModelId::new("gone").unwrap();
        steps.push((
            NOTES,
            vec![Write::CreateModel {
                model: gone.clone(),
                record: plain_record(),
                snapshot: snapshot(0, object(id(0, 0), vec![])),
            }],
        ));
        steps.push((
            NOTES,
            vec![Write::DeleteModel { model: gone, at: Timestamp(1_700_000_000_999) }],
        ));
        // The same model id in another domain is another model.
        steps.push((
            OTHER,
            vec![
                Write::PutCollection { collection: notes(), config: restricted() },
                Write::CreateModel {
                    model: ModelId::new("doc").unwrap(),
                    record: plain_record(),
                    snapshot: snapshot(0, every_kind()),
                },
            ],
        ));
        steps
    }

    fn model(store: &RedbStore, key: &ModelKey) -> StoredModel {
        match store.load(key).unwrap() {
            Loaded::Model(model) => *model,
            other => panic!("{key:?} does not load: {other:?}"),
        }
    }

    /// Reads everything back and compares it with what format 1 wrote.
    pub(super) fn check(store: &RedbStore) {
        let operations: Vec<CommittedOperation> =
            doc_operations().into_iter().map(|(_, _, op)| op).collect();
        let doc = model(store, &key(NOTES, "doc"));
        assert_eq!(doc.record, doc_record_regranted(), "doc: the record");
        assert_eq!(doc.collection, Some(CollectionConfig::default()), "doc: its collection");
        assert_eq!(doc.snapshot, snapshot(2, doc_v2()), "doc: the snapshot");
        assert_eq!(doc.operations, operations[2..], "doc: the operations after the snapshot");
        let committed = |version, timestamp| Decision::Committed(Commit { version, timestamp });
        let last_decisions = BTreeMap::from([
            (ReplicaId(11), (2, committed(3, operations[2].timestamp))),
            (ReplicaId(12), (5, committed(4, operations[3].timestamp))),
        ]);
        assert_eq!(doc.last_decisions, last_decisions, "doc: the last commit per replica");
        let log = store.operations(&key(NOTES, "doc"), 0, u64::MAX, usize::MAX).unwrap();
        assert_eq!(log, operations, "doc: the whole log");
        assert_eq!(store.operations(&key(NOTES, "doc"), 1, 3, 1).unwrap(), operations[1..2]);
        // The snapshot and the operations after it rebuild the model, as the server does.
        let doc_id = ModelId::new("doc").unwrap();
        let mut sequencer = Sequencer::new(doc_id, doc.snapshot, doc.last_decisions, 10);
        for operation in doc.operations {
            sequencer.replay(operation).unwrap();
        }
        let json = serde_json::json!({ "title": "Hi!", "count": 5.0, "done": true });
        assert_eq!(sequencer.document().to_json(), json);

        let plain = model(store, &key(NOTES, "plain"));
        assert_eq!(plain.record, plain_record(), "plain: the record");
        assert_eq!(plain.snapshot, snapshot(0, every_kind()), "plain: the snapshot");
        assert!(plain.operations.is_empty() && plain.last_decisions.is_empty());

        assert!(matches!(
            store.load(&key(NOTES, "gone")).unwrap(),
            Loaded::Absent { deleted: true }
        ));
        assert!(matches!(
            store.load(&key(NOTES, "never")).unwrap(),
            Loaded::Absent { deleted: false }
        ));
        assert!(store.operations(&key(NOTES, "gone"), 0, u64::MAX, usize::MAX).unwrap().is_empty());

        let other = model(store, &key(OTHER, "doc"));
        assert_eq!(other.record, plain_record(), "the other domain's doc");
        assert_eq!(other.snapshot, snapshot(0, every_kind()));
        assert!(other.operations.is_empty());

        assert_eq!(store.collection(NOTES, &notes()).unwrap(), Some(CollectionConfig::default()));
        assert_eq!(store.collection(OTHER, &notes()).unwrap(), Some(restricted()));
        let absent = CollectionId::new("absent").unwrap();
        assert_eq!(store.collection(NOTES, &absent).unwrap(), None);

        for user in users() {
            assert_eq!(store.user(NOTES, &user.id).unwrap(), Some(user.clone()));
            assert_eq!(store.user(OTHER, &user.id).unwrap(), None);
        }
    }
}

/// Format 2: every record checksummed, the last commits in their own table of records, and
/// the replica owners. It holds what format 1 held, and replicas bound to users.
mod v2 {
    use super::*;

    const NOTES: &str = "acme/notes";
    const OTHER: &str = "other/main";

    /// Format 1's steps, then replica bindings: a second binding of a replica never replaces
    /// the first, and domains bind independently.
    pub(super) fn writes() -> Vec<(&'static str, Vec<Write>)> {
        let bind = |replica, owner: &str| Write::BindReplica {
            replica: ReplicaId(replica),
            user: user(owner),
        };
        let mut steps = v1::writes();
        steps.push((NOTES, vec![bind(11, "ann"), bind(12, "bob")]));
        steps.push((NOTES, vec![bind(11, "bob")]));
        steps.push((OTHER, vec![bind(11, "bob")]));
        steps
    }

    pub(super) fn check(store: &RedbStore) {
        v1::check(store);
        let owner = |domain, replica| store.replica_owner(domain, ReplicaId(replica)).unwrap();
        assert_eq!(owner(NOTES, 11), Some(user("ann")), "the first binding stays");
        assert_eq!(owner(NOTES, 12), Some(user("bob")));
        assert_eq!(owner(OTHER, 11), Some(user("bob")), "another domain binds on its own");
        assert_eq!(owner(NOTES, 13), None);
        assert_eq!(owner(OTHER, 12), None);
    }
}

/// Format 3: a replica's last decision may be a refusal (with its code), not only a commit.
/// It holds what format 2 held, and a model whose replicas' last decisions went from commit
/// to refusal and back, and refusals alone in the other domain (one with a code this version
/// does not name, kept as a number).
mod v3 {
    use super::*;

    const NOTES: &str = "acme/notes";
    const OTHER: &str = "other/main";

    fn mixed() -> ModelId {
        ModelId::new("mixed").unwrap()
    }

    fn record() -> ModelRecord {
        ModelRecord {
            collection: CollectionId::new("notes").unwrap(),
            created_at: Timestamp(1_700_000_100_000),
            nonce: Some(CreationNonce(*b"fixture-nonce-03")),
            creator: Some(user("bob")),
            grants: PermissionGrants::default(),
        }
    }

    fn snapshot() -> ModelSnapshot {
        ModelSnapshot {
            collection: CollectionId::new("notes").unwrap(),
            version: 0,
            created_at: Timestamp(1_700_000_100_000),
            modified_at: Timestamp(1_700_000_100_000),
            data: Document::new(object(
                id(0, 0),
                vec![("n", value(id(0, 1), ValueData::Number(0.0)))],
            ))
            .unwrap(),
        }
    }

    /// Versions 1 and 2 of `mixed`: deltas on `n` by replicas 11 and 12.
    fn operation(version: u64) -> CommittedOperation {
        CommittedOperation {
            version,
            author: SessionId("s-mixed".into()),
            timestamp: Timestamp(1_700_000_100_000 + version as i64),
            operation: DiscreteOperation::new(id(0, 1), OperationKind::NumberDelta { delta: 1.0 })
                .into(),
        }
    }

    fn refusal(model: ModelId, replica: u64, seq: u64, code: ErrorCode) -> Write {
        Write::Refusal(RefusalRecord { model, replica: ReplicaId(replica), seq, code })
    }

    fn commit(replica: u64, seq: u64, version: u64) -> Write {
        Write::Commit(CommitRecord {
            model: mixed(),
            operation: operation(version),
            replica: ReplicaId(replica),
            seq,
        })
    }

    /// Format 2's steps, then `mixed` (replica 11: committed, then refused; replica 12:
    /// refused, then committed) and refusals of the other domain's `doc`.
    pub(super) fn writes() -> Vec<(&'static str, Vec<Write>)> {
        let mut steps = v2::writes();
        let create = Write::CreateModel { model: mixed(), record: record(), snapshot: snapshot() };
        steps.push((NOTES, vec![create]));
        steps.push((NOTES, vec![commit(11, 1, 1)]));
        steps.push((NOTES, vec![refusal(mixed(), 11, 2, ErrorCode::INVALID_OPERATION)]));
        steps.push((NOTES, vec![refusal(mixed(), 12, 3, ErrorCode::MODEL_TOO_LARGE)]));
        steps.push((NOTES, vec![commit(12, 4, 2)]));
        let doc = ModelId::new("doc").unwrap();
        steps.push((OTHER, vec![refusal(doc.clone(), 21, 1, ErrorCode::PERMISSION_DENIED)]));
        steps.push((OTHER, vec![refusal(doc, 22, 7, ErrorCode(999))]));
        steps
    }

    pub(super) fn check(store: &RedbStore) {
        v2::check(store);
        let Loaded::Model(mixed) = store.load(&key(NOTES, "mixed")).unwrap() else {
            panic!("mixed does not load")
        };
        assert_eq!(mixed.record, record());
        assert_eq!(mixed.snapshot, snapshot());
        assert_eq!(mixed.operations, vec![operation(1), operation(2)]);
        let committed =
            Decision::Committed(Commit { version: 2, timestamp: operation(2).timestamp });
        let decisions = BTreeMap::from([
            (ReplicaId(11), (2, Decision::Refused(ErrorCode::INVALID_OPERATION))),
            (ReplicaId(12), (4, committed)),
        ]);
        assert_eq!(mixed.last_decisions, decisions, "mixed: the last decision per replica");
        let Loaded::Model(other) = store.load(&key(OTHER, "doc")).unwrap() else {
            panic!("the other domain's doc does not load")
        };
        let decisions = BTreeMap::from([
            (ReplicaId(21), (1, Decision::Refused(ErrorCode::PERMISSION_DENIED))),
            (ReplicaId(22), (7, Decision::Refused(ErrorCode(999)))),
        ]);
        assert_eq!(other.last_decisions, decisions, "the other domain's refusals");
    }
}

/// Format 4: histories are kept — every snapshot (and the model as created) stays as a
/// checkpoint, and each operation's user is recorded. It holds what format 3 held, and
/// `story`, edited by two users past two snapshots.
mod v4 {
    use concord_protocol::{
        HistoryOperation, HistoryPage, HistoryStart, RequestId, ServerMessage, ServerResponse,
    };
    use concord_sync::host::{HistoryQuery, HistoryRead};

    use super::*;

    const NOTES: &str = "acme/notes";

    fn story() -> ModelId {
        ModelId::new("story").unwrap()
    }

    fn snapshot(version: u64) -> ModelSnapshot {
        ModelSnapshot {
            collection: CollectionId::new("notes").unwrap(),
            version,
            created_at: Timestamp(1_700_000_200_000),
            modified_at: Timestamp(1_700_000_200_000 + version as i64),
            data: Document::new(object(
                id(0, 0),
                vec![("n", value(id(0, 1), ValueData::Number(version as f64)))],
            ))
            .unwrap(),
        }
    }

    fn operation(version: u64) -> CommittedOperation {
        CommittedOperation {
            version,
            author: SessionId(format!("s-{}", version % 2)),
            timestamp: Timestamp(1_700_000_200_000 + version as i64),
            operation: DiscreteOperation::new(id(0, 1), OperationKind::NumberDelta { delta: 1.0 })
                .into(),
        }
    }

    /// Replica 31 belongs to ann, 32 to bob; odd versions are ann's.
    fn replica(version: u64) -> ReplicaId {
        ReplicaId(if version % 2 == 1 { 31 } else { 32 })
    }

    fn owner(version: u64) -> UserId {
        user(if version % 2 == 1 { "ann" } else { "bob" })
    }

    /// Format 3's steps, then `story`: created, five operations, snapshots at 2 and 4.
    pub(super) fn writes() -> Vec<(&'static str, Vec<Write>)> {
        let mut steps = v3::writes();
        let record = ModelRecord {
            collection: CollectionId::new("notes").unwrap(),
            created_at: Timestamp(1_700_000_200_000),
            nonce: None,
            creator: Some(user("ann")),
            grants: PermissionGrants::default(),
        };
        steps.push((
            NOTES,
            vec![
                Write::BindReplica { replica: ReplicaId(31), user: user("ann") },
                Write::BindReplica { replica: ReplicaId(32), user: user("bob") },
                Write::CreateModel { model: story(), record, snapshot: snapshot(0) },
            ],
        ));
        for version in 1..=5 {
            let commit = Write::Commit(CommitRecord {
                model: story(),
                operation: operation(version),
                replica: replica(version),
                seq: version,
            });
            let mut writes = vec![commit];
            if version % 2 == 0 {
                writes.push(Write::Snapshot { model: story(), snapshot: snapshot(version) });
            }
            steps.push((NOTES, writes));
        }
        steps
    }

    /// One history answer from `store`, as the server gives it.
    fn history(
        store: &RedbStore,
        model: &str,
        through: u64,
        query: HistoryQuery,
    ) -> ServerResponse {
        let read = HistoryRead {
            request: RequestId(1),
            model: ModelId::new(model).unwrap(),
            collection: CollectionId::new("notes").unwrap(),
            created_at: Timestamp(0),
            through,
            modified_at: Timestamp(0),
            checkpoint_every: 2,
            query,
        };
        match store.history(&key(NOTES, model), &read) {
            ServerMessage::Response { response, .. } => response,
            other => panic!("{model}: {other:?}"),
        }
    }

    fn page(store: &RedbStore, model: &str, through: u64, start: u64) -> HistoryPage {
        let query = HistoryQuery::Fetch {
            start: HistoryStart::Version(start),
            checkpoint: true,
            max_operations: 100,
            max_bytes: u32::MAX,
        };
        match history(store, model, through, query) {
            ServerResponse::HistoryPage(page) => page,
            other => panic!("{model}: {other:?}"),
        }
    }

    fn min_version(store: &RedbStore, model: &str, through: u64) -> u64 {
        match history(store, model, through, HistoryQuery::Open) {
            ServerResponse::HistoryOpened(info) => info.min_version,
            other => panic!("{model}: {other:?}"),
        }
    }

    /// What an older store's history holds once migrated: each model's latest snapshot is
    /// where its history starts; its operations after it carry no user.
    pub(super) fn check_migrated(store: &RedbStore) {
        assert_eq!(min_version(store, "doc", 4), 2, "doc: snapshotted at 2 before format 4");
        let page = page(store, "doc", 4, 3);
        assert_eq!(page.checkpoint.map(|c| c.version), Some(2));
        let versions: Vec<(u64, Option<UserId>)> =
            page.operations.iter().map(|o| (o.operation.version, o.user.clone())).collect();
        assert_eq!(versions, vec![(3, None), (4, None)]);
        assert_eq!(min_version(store, "plain", 0), 0, "plain: never snapshotted since creation");
    }

    pub(super) fn check(store: &RedbStore) {
        v3::check(store);
        // Created after format 4: the whole history, from the model as created.
        assert_eq!(min_version(store, "doc", 4), 0);
        let Loaded::Model(loaded) = store.load(&key(NOTES, "story")).unwrap() else {
            panic!("story does not load")
        };
        assert_eq!(loaded.snapshot, snapshot(4));
        assert_eq!(min_version(store, "story", 5), 0);
        for (start, checkpoint) in [(0, 0), (1, 0), (2, 2), (3, 2), (5, 4)] {
            let got = page(store, "story", 5, start);
            assert_eq!(got.checkpoint, Some(snapshot(checkpoint)), "story from {start}");
            let expected: Vec<HistoryOperation> = (checkpoint + 1..=5)
                .map(|v| HistoryOperation { operation: operation(v), user: Some(owner(v)) })
                .collect();
            assert_eq!(got.operations, expected, "story from {start}");
        }
        // A time between versions 3 and 4 resolves to 3.
        let query = HistoryQuery::Fetch {
            start: HistoryStart::Time(Timestamp(1_700_000_200_003)),
            checkpoint: false,
            max_operations: 0,
            max_bytes: 0,
        };
        let ServerResponse::HistoryPage(at) = history(store, "story", 5, query) else {
            panic!("no page")
        };
        assert_eq!(at.start_version, 3);
    }
}

/// Format 5: each collection's models are listed and indexes kept. It holds what format 4
/// held, `story` indexed on `n` (at its version 5), and the index declaration.
mod v5 {
    use concord_protocol::{QueryData, QueryPage, RequestId, ServerMessage, ServerResponse};
    use concord_query::{IndexKey, Path, Query};
    use concord_sync::host::{HostConfig, QueryLimits, QueryRead};

    use super::*;

    const NOTES: &str = "acme/notes";

    fn notes() -> CollectionId {
        CollectionId::new("notes").unwrap()
    }

    pub(super) fn indexes() -> BTreeMap<CollectionId, Vec<Path>> {
        BTreeMap::from([(notes(), vec![Path::parse("n").unwrap()])])
    }

    pub(super) fn writes() -> Vec<(&'static str, Vec<Write>)> {
        let mut steps = v4::writes();
        let key = IndexKey::encode(Some(&ValueData::Number(5.0)));
        let keys = vec![(Path::parse("n").unwrap(), key)];
        let story = ModelId::new("story").unwrap();
        steps.push((NOTES, vec![Write::IndexModel { model: story, collection: notes(), keys }]));
        steps
    }

    fn query(store: &RedbStore, text: &str) -> QueryPage {
        let read = QueryRead {
            request: RequestId(1),
            user: User { id: user("ann"), display_name: None, anonymous: false },
            query: Query::parse(text).unwrap(),
        };
        let config = HostConfig { indexes: indexes(), ..HostConfig::default() };
        match store.query(NOTES, &read, &config, &QueryLimits::default()) {
            ServerMessage::Response { response: ServerResponse::QueryResult(page), .. } => page,
            other => panic!("{text}: {other:?}"),
        }
    }

    /// An older store once migrated: its models are listed in their collections.
    pub(super) fn check_migrated(store: &RedbStore) {
        let page = query(store, "SELECT title FROM notes");
        assert!(page.index.is_none());
        let ids: Vec<&str> = page.rows.iter().map(|r| r.model.as_str()).collect();
        assert!(ids.contains(&"doc"), "doc is listed in notes: {ids:?}");
    }

    pub(super) fn check(store: &RedbStore) {
        v4::check(store);
        check_migrated(store);
        let page = query(store, "SELECT n FROM notes WHERE n >= 5");
        assert_eq!((page.index.as_deref(), page.total, page.scanned), (Some("n"), 1, 1));
        let row = &page.rows[0];
        assert_eq!((row.model.as_str(), row.version), ("story", 5));
        let n = match &row.data {
            QueryData::Paths(values) => values[0].as_ref().map(|v| v.data.clone()),
            QueryData::All(_) => None,
        };
        assert_eq!(n, Some(ValueData::Number(5.0)));
    }
}

/// Format 6: users' identities (display name, email, when learned) are kept. It holds what
/// format 5 held, and identities in both domains, one of them learned twice.
mod v6 {
    use concord_protocol::Identity;

    use super::*;

    const NOTES: &str = "acme/notes";
    const OTHER: &str = "other/main";

    fn identity(id: &str, name: &str, email: Option<&str>) -> Identity {
        Identity {
            user: user(id),
            display_name: Some(name.into()),
            email: email.map(str::to_owned),
        }
    }

    fn put(identity: Identity, seen: i64) -> Write {
        Write::PutIdentity { identity, seen: Timestamp(1_700_000_300_000 + seen) }
    }

    pub(super) fn writes() -> Vec<(&'static str, Vec<Write>)> {
        let mut steps = v5::writes();
        steps.push((NOTES, vec![put(identity("ann", "Ann", Some("ann@example.org")), 1)]));
        steps.push((NOTES, vec![put(identity("bob", "Bob", None), 2)]));
        steps.push((NOTES, vec![put(identity("ann", "Ann B.", Some("ann@example.org")), 3)]));
        steps.push((OTHER, vec![put(identity("cay", "Cay", Some("cay@example.org")), 0)]));
        steps
    }

    /// An older store once migrated: no identities yet.
    pub(super) fn check_migrated(store: &RedbStore) {
        assert!(store.identities(NOTES, 100).unwrap().is_empty());
    }

    pub(super) fn check(store: &RedbStore) {
        v5::check(store);
        let ann = identity("ann", "Ann B.", Some("ann@example.org"));
        let bob = identity("bob", "Bob", None);
        assert_eq!(store.identities(NOTES, 100).unwrap(), [bob, ann.clone()], "oldest first");
        assert_eq!(store.identities(NOTES, 1).unwrap(), [ann], "the newest within the bound");
        let cay = identity("cay", "Cay", Some("cay@example.org"));
        assert_eq!(store.identities(OTHER, 100).unwrap(), [cay]);
        assert!(store.identities("nobody/here", 100).unwrap().is_empty());
        assert!(store.identities(NOTES, 0).unwrap().is_empty());
    }
}

/// The store trait's contract on both backends, over the scenario above.
#[cfg(feature = "postgres")]
#[path = "store_contract_tests.rs"]
mod contract;
