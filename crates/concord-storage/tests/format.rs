//! The redb store keeps reading what earlier versions wrote.
//!
//! `tests/fixtures/client-v<N>.redb` is a store written by format `N`, holding every kind of
//! record. For every format up to [`FORMAT_VERSION`] a fixture must exist; the test opens a
//! copy (migrating it), checks that the file now records the current format, and compares
//! everything it reads with the values written out below. So changing how a record, a key or
//! a table is stored fails here until the format is bumped, a migration added and a fixture
//! of the new format committed.
//!
//! A fixture is written once, by the format that names it, and never again: regenerating an
//! existing version's fixture is never the fix for a failing test (it would hide exactly the
//! incompatibility this test is for). When a format `N + 1` ships: add its migration, add
//! `expected` and `batches` for `N + 1` (the old ones stay as they are, unless the migration
//! deliberately changes how old data reads), then write the new fixture with
//!
//! ```text
//! cargo test -p concord-storage --features redb --test format -- --ignored write_fixture
//! ```
//!
//! which writes only the current format's fixture, and refuses if it exists.

#![cfg(all(feature = "redb", not(target_arch = "wasm32")))]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use concord_ot::ValueData::{self, Array, Boolean, Date, Null, Number, Object};
use concord_ot::{DiscreteOperation, ElementId, Operation, OperationKind, ReplicaId, Value};
use concord_protocol::{
    CollectionId, CommittedOperation, CreationNonce, ModelId, Permissions, SessionId, Timestamp,
    User, UserId,
};
use concord_storage::{
    Batch, CreationRecord, FORMAT_VERSION, IdentityCache, ModelRecord, ModelState, ModelSummary,
    Mutation, OfflineStore, PendingOperation, RedbStore, Snapshot, StoreKey,
};
use pollster::block_on;

fn fixture(version: u32) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/client-v{version}.redb"))
}

/// Everything a store holds, as its reads return it.
#[derive(Debug, PartialEq)]
struct Contents {
    replica: Option<ReplicaId>,
    models: Vec<ModelState>,
    subscriptions: BTreeSet<ModelId>,
    identities: IdentityCache,
}

fn read(store: &RedbStore) -> Contents {
    let summaries = block_on(store.models()).expect("models");
    let models: Vec<ModelState> = summaries
        .iter()
        .map(|s| block_on(store.load_model(&s.record.id)).expect("load").expect("listed"))
        .collect();
    let listed: Vec<&ModelSummary> = models.iter().map(|m| &m.summary).collect();
    assert_eq!(summaries.iter().collect::<Vec<_>>(), listed, "models() and load_model agree");
    Contents {
        replica: block_on(store.replica_id()).expect("replica id"),
        models,
        subscriptions: block_on(store.subscriptions()).expect("subscriptions"),
        identities: block_on(store.identities()).expect("identities"),
    }
}

/// The format version a store file records, read straight from the file (`meta` table,
/// `format_version`, a little-endian `u32`: the one value every version can read). Read
/// only: even a plain open rewrites a redb file's header, and a fixture must never change.
fn recorded_format(path: &Path) -> u32 {
    let meta = redb::TableDefinition::<&[u8], &[u8]>::new("meta");
    let database = redb::ReadOnlyDatabase::open(path).expect("a redb file");
    let transaction = redb::ReadableDatabase::begin_read(&database).expect("read");
    let table = transaction.open_table(meta).expect("meta table");
    let value = redb::ReadableTable::get(&table, &b"format_version"[..]).expect("get");
    let bytes: [u8; 4] = value.expect("a format version").value().try_into().expect("4 bytes");
    u32::from_le_bytes(bytes)
}

/// What the fixture of `version` reads as with this version of the code.
fn expected(version: u32) -> Option<Contents> {
    match version {
        1 => Some(v1::expected()),
        2 => Some(v2::expected()),
        3 => Some(v3::expected()),
        _ => None,
    }
}

/// What the fixture generator writes: the current format's batches.
fn current_batches() -> Vec<Batch> {
    assert_eq!(FORMAT_VERSION, 3, "add the batches of the new format here");
    v3::batches()
}

#[test]
fn every_format_has_a_fixture_that_reads_as_expected() {
    for version in 1..=FORMAT_VERSION {
        let path = fixture(version);
        assert!(
            path.exists(),
            "no fixture of format {version}: commit one (see this file's header)"
        );
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(recorded_format(&path), version, "{} holds another format", path.display());
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("store.redb");
        std::fs::copy(&path, &copy).unwrap();
        let store = RedbStore::open(&copy, &v1::key())
            .unwrap_or_else(|e| panic!("format {version} does not open: {e}"));
        let expected = expected(version)
            .unwrap_or_else(|| panic!("write out what the format {version} fixture holds"));
        assert_reads_as(read(&store), expected, &format!("format {version}"));
        drop(store);
        assert_eq!(recorded_format(&copy), FORMAT_VERSION, "format {version} was not migrated");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "the test changed {}", path.display());
    }
}

#[test]
fn the_generator_writes_what_the_current_fixture_holds() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.redb");
    write_store(&path);
    let store = RedbStore::open(&path, &v1::key()).unwrap();
    let expected = expected(FORMAT_VERSION).expect("the current format's contents");
    assert_reads_as(read(&store), expected, "a freshly generated store");
}

/// Compares part by part, so that a failure names what reads differently.
fn assert_reads_as(actual: Contents, expected: Contents, what: &str) {
    assert_eq!(actual.replica, expected.replica, "{what}: the replica id");
    let ids =
        |c: &Contents| c.models.iter().map(|m| m.summary.record.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&actual), ids(&expected), "{what}: the models");
    for (a, e) in actual.models.iter().zip(&expected.models) {
        let model = &e.summary.record.id;
        assert_eq!(a.summary, e.summary, "{what}: {model}: the record and summary");
        assert_eq!(a.snapshot, e.snapshot, "{what}: {model}: the snapshot");
        assert_eq!(a.server_operations, e.server_operations, "{what}: {model}: server operations");
        assert_eq!(a.pending, e.pending, "{what}: {model}: pending operations");
        assert_eq!(a.creation, e.creation, "{what}: {model}: the creation record");
    }
    assert_eq!(actual.subscriptions, expected.subscriptions, "{what}: the subscriptions");
    assert_eq!(actual.identities, expected.identities, "{what}: the identity cache");
}

fn write_store(path: &Path) {
    let store = RedbStore::open(path, &v1::key()).unwrap();
    for batch in current_batches() {
        block_on(store.commit(batch)).unwrap();
    }
    drop(store);
    // Compaction only makes the file small; it does not change what it holds.
    let mut database = redb::Database::open(path).unwrap();
    while database.compact().unwrap() {}
}

/// Writes the current format's fixture. Never overwrites one: see this file's header.
#[test]
#[ignore = "writes a fixture file; run by hand when a new format ships"]
fn write_fixture() {
    let path = fixture(FORMAT_VERSION);
    assert!(
        !path.exists(),
        "{} exists: a fixture is never regenerated (see this file's header)",
        path.display()
    );
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_store(&path);
    assert_eq!(recorded_format(&path), FORMAT_VERSION);
}

/// Short constructors for the literal values below.
fn id(counter: u64) -> ElementId {
    ElementId::new(0x00c0_ffee, counter)
}

fn value(counter: u64, data: ValueData) -> Value {
    Value::new(id(counter), data)
}

fn text(counter: u64, s: &str) -> Value {
    value(counter, ValueData::String(s.into()))
}

fn object(counter: u64, entries: Vec<(&str, Value)>) -> Value {
    value(counter, Object(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect()))
}

fn op(target: u64, kind: OperationKind) -> DiscreteOperation {
    DiscreteOperation::new(id(target), kind)
}

fn model(s: &str) -> ModelId {
    ModelId::new(s).unwrap()
}

/// Format 1, the first.
mod v1 {
    use super::*;

    pub(super) fn key() -> StoreKey {
        StoreKey::new("wss://fixture.concord.test:7700/acme/notes", "alice")
    }

    fn collection() -> CollectionId {
        CollectionId::new("notes").unwrap()
    }

    /// A root with every kind of value.
    fn root() -> Value {
        object(
            0,
            vec![
                ("title", text(1, "héllo ✓ \u{1F600}")),
                (
                    "items",
                    value(
                        2,
                        Array(vec![
                            value(3, Number(-0.5)),
                            value(4, Boolean(true)),
                            value(5, Null),
                        ]),
                    ),
                ),
                ("due", value(6, Date(1_767_225_600_000))),
                ("meta", object(7, vec![("count", value(8, Number(1e300)))])),
            ],
        )
    }

    /// Every one of the 15 discrete operation kinds, in discrete and compound operations,
    /// one marked no-op. (Records, not a history: the store keeps them without applying.)
    fn server_operations() -> Vec<CommittedOperation> {
        let committed = |version: u64, author: &str, operation: Operation| CommittedOperation {
            version,
            author: SessionId(author.into()),
            timestamp: Timestamp(1_767_225_600_000 + version as i64),
            operation,
        };
        let mut noop = op(
            7,
            OperationKind::ObjectSetProperty { key: "count".into(), value: value(20, Number(2.0)) },
        );
        noop.noop = true;
        vec![
            committed(
                4,
                "s1",
                op(
                    1,
                    OperationKind::StringSplice { index: 2, delete_count: 1, insert: "ü".into() },
                )
                .into(),
            ),
            committed(
                5,
                "s2",
                Operation::Compound(vec![
                    op(2, OperationKind::ArrayInsert { index: 1, value: text(21, "new") }),
                    op(2, OperationKind::ArrayMove { from: 0, to: 2 }),
                    op(2, OperationKind::ArrayRemove { index: 1 }),
                ]),
            ),
            committed(6, "s1", noop.into()),
        ]
    }

    fn pending() -> Vec<PendingOperation> {
        let values = BTreeMap::from([("a".to_string(), value(30, Number(1.0)))]);
        vec![
            PendingOperation {
                seq: 1,
                through: 1,
                operation: Operation::Compound(vec![
                    op(
                        7,
                        OperationKind::ObjectAddProperty {
                            key: "tag".into(),
                            value: text(31, "t"),
                        },
                    ),
                    op(7, OperationKind::ObjectRemoveProperty { key: "tag".into() }),
                    op(7, OperationKind::ObjectSet { values }),
                ]),
            },
            PendingOperation {
                seq: 2,
                through: 2,
                operation: op(1, OperationKind::StringSet { value: String::new() }).into(),
            },
            PendingOperation {
                seq: 3,
                through: 3,
                operation: Operation::Compound(vec![
                    op(2, OperationKind::ArrayReplace { index: 0, value: value(32, Null) }),
                    op(2, OperationKind::ArraySet { values: vec![value(33, Boolean(false))] }),
                    op(3, OperationKind::NumberDelta { delta: 0.25 }),
                    op(3, OperationKind::NumberSet { value: -7.0 }),
                    op(4, OperationKind::BooleanSet { value: false }),
                    op(6, OperationKind::DateSet { value: -1 }),
                ]),
            },
        ]
    }

    fn snapshot(version: u64, root: Value) -> Snapshot {
        Snapshot {
            version,
            created_at: Timestamp(1_700_000_000_000),
            modified_at: Timestamp(1_700_000_000_000 + version as i64),
            root,
        }
    }

    fn creation() -> CreationRecord {
        CreationRecord {
            collection: collection(),
            initial: object(0, vec![("made", text(1, "offline"))]),
            nonce: CreationNonce(*b"0123456789abcdef"),
        }
    }

    fn users() -> Vec<User> {
        vec![
            User {
                id: UserId("alice".into()),
                display_name: Some("Alice".into()),
                anonymous: false,
            },
            User { id: UserId("bob".into()), display_name: None, anonymous: false },
            User {
                id: UserId("anon-7".into()),
                display_name: Some("Guest".into()),
                anonymous: true,
            },
        ]
    }

    fn sessions() -> BTreeMap<SessionId, UserId> {
        BTreeMap::from([
            (SessionId("s1".into()), UserId("alice".into())),
            (SessionId("s2".into()), UserId("bob".into())),
            (SessionId("s3".into()), UserId("anon-7".into())),
        ])
    }

    /// Written by the store's public API, as the engine would: a synced model with server
    /// and pending operations and a submission in flight; one created offline; a tombstone;
    /// one whose pending operations were all acknowledged; subscriptions (one to a model
    /// never downloaded); the identity cache; the replica id.
    pub(super) fn batches() -> Vec<Batch> {
        let synced = model("synced");
        let offline = model("made-offline");
        let deleted = model("deleted-here");
        let acked = model("acknowledged");
        let record = |id: &ModelId| ModelRecord::new(id.clone(), collection());
        vec![
            Batch::new().with(Mutation::SetReplicaId(ReplicaId(0x0123_4567_89ab_cdef))),
            Batch::new()
                .with(Mutation::PutModel(ModelRecord {
                    permissions: Some(Permissions {
                        read: true,
                        write: true,
                        remove: false,
                        manage: false,
                    }),
                    ..record(&synced)
                }))
                .with(Mutation::PutSnapshot {
                    model: synced.clone(),
                    snapshot: snapshot(3, root()),
                })
                .with(Mutation::AppendServerOperations {
                    model: synced.clone(),
                    operations: server_operations(),
                })
                .with(Mutation::AppendPending { model: synced.clone(), operations: pending() })
                .with(Mutation::AdvanceElementCounter { model: synced.clone(), next: 42 })
                .with(Mutation::SetInFlight { model: synced.clone(), through_seq: Some(2) }),
            Batch::new()
                .with(Mutation::PutModel(ModelRecord { created_locally: true, ..record(&offline) }))
                .with(Mutation::PutSnapshot {
                    model: offline.clone(),
                    snapshot: snapshot(0, creation().initial),
                })
                .with(Mutation::PutCreation { model: offline.clone(), creation: creation() })
                .with(Mutation::AppendPending {
                    model: offline.clone(),
                    operations: vec![pending().remove(1)],
                }),
            Batch::new()
                .with(Mutation::PutModel(ModelRecord {
                    permissions: Some(Permissions::ALL),
                    ..record(&deleted)
                }))
                .with(Mutation::PutSnapshot {
                    model: deleted.clone(),
                    snapshot: snapshot(7, object(0, vec![])),
                }),
            Batch::new().with(Mutation::PutModel(ModelRecord {
                deleted_locally: true,
                permissions: Some(Permissions::ALL),
                ..record(&deleted)
            })),
            Batch::new()
                .with(Mutation::PutModel(ModelRecord {
                    permissions: Some(Permissions::NONE),
                    next_element_counter: u64::MAX,
                    ..record(&acked)
                }))
                .with(Mutation::PutSnapshot { model: acked.clone(), snapshot: snapshot(3, root()) })
                .with(Mutation::AppendServerOperations {
                    model: acked.clone(),
                    operations: server_operations(),
                })
                .with(Mutation::AppendPending { model: acked.clone(), operations: pending() })
                .with(Mutation::SetInFlight { model: acked.clone(), through_seq: Some(3) }),
            // Acknowledged: pending removed and a snapshot at version 5 compacts the log.
            Batch::new()
                .with(Mutation::RemovePendingThrough { model: acked.clone(), through_seq: 3 })
                .with(Mutation::SetInFlight { model: acked.clone(), through_seq: None })
                .with(Mutation::PutSnapshot {
                    model: acked.clone(),
                    snapshot: snapshot(5, object(0, vec![])),
                }),
            Batch::new()
                .with(Mutation::Subscribe(vec![synced.clone(), acked, model("never-downloaded")]))
                .with(Mutation::PutSessions(sessions().into_iter().collect()))
                .with(Mutation::PutSessions(vec![(SessionId("gone".into()), UserId("bob".into()))]))
                .with(Mutation::RemoveSessions(vec![SessionId("gone".into())]))
                .with(Mutation::PutUsers(users())),
        ]
    }

    /// What the format 1 fixture holds, in model id order.
    pub(super) fn expected() -> Contents {
        let record = |id: &str| ModelRecord::new(model(id), collection());
        let summary = |record: ModelRecord| ModelSummary {
            record,
            snapshot_version: None,
            confirmed_version: None,
            pending_count: 0,
            last_pending_seq: None,
            in_flight_through: None,
            has_creation: false,
        };
        let acknowledged = ModelState {
            summary: ModelSummary {
                snapshot_version: Some(5),
                confirmed_version: Some(6),
                last_pending_seq: Some(3),
                ..summary(ModelRecord {
                    permissions: Some(Permissions::NONE),
                    next_element_counter: u64::MAX,
                    ..record("acknowledged")
                })
            },
            snapshot: Some(snapshot(5, object(0, vec![]))),
            server_operations: server_operations()[2..].to_vec(),
            pending: Vec::new(),
            creation: None,
        };
        let deleted = ModelState {
            summary: ModelSummary {
                snapshot_version: Some(7),
                confirmed_version: Some(7),
                ..summary(ModelRecord {
                    deleted_locally: true,
                    permissions: Some(Permissions::ALL),
                    ..record("deleted-here")
                })
            },
            snapshot: Some(snapshot(7, object(0, vec![]))),
            server_operations: Vec::new(),
            pending: Vec::new(),
            creation: None,
        };
        let offline = ModelState {
            summary: ModelSummary {
                snapshot_version: Some(0),
                confirmed_version: Some(0),
                pending_count: 1,
                last_pending_seq: Some(2),
                has_creation: true,
                ..summary(ModelRecord { created_locally: true, ..record("made-offline") })
            },
            snapshot: Some(snapshot(0, creation().initial)),
            server_operations: Vec::new(),
            pending: vec![pending().remove(1)],
            creation: Some(creation()),
        };
        let synced = ModelState {
            summary: ModelSummary {
                snapshot_version: Some(3),
                confirmed_version: Some(6),
                pending_count: 3,
                last_pending_seq: Some(3),
                in_flight_through: Some(2),
                ..summary(ModelRecord {
                    permissions: Some(Permissions {
                        read: true,
                        write: true,
                        remove: false,
                        manage: false,
                    }),
                    next_element_counter: 42,
                    ..record("synced")
                })
            },
            snapshot: Some(snapshot(3, root())),
            server_operations: server_operations(),
            pending: pending(),
            creation: None,
        };
        Contents {
            replica: Some(ReplicaId(0x0123_4567_89ab_cdef)),
            models: vec![acknowledged, deleted, offline, synced],
            subscriptions: ["synced", "acknowledged", "never-downloaded"]
                .into_iter()
                .map(model)
                .collect(),
            identities: IdentityCache {
                sessions: sessions(),
                users: users().into_iter().map(|u| (u.id.clone(), u)).collect(),
                identities: BTreeMap::new(),
            },
        }
    }
}

/// Format 2: format 1's records and the `identities` table.
mod v2 {
    use super::*;

    fn identities() -> Vec<concord_protocol::Identity> {
        vec![
            concord_protocol::Identity {
                user: UserId("alice".into()),
                display_name: Some("Alice Ümlaut".into()),
                email: Some("alice@example.org".into()),
            },
            concord_protocol::Identity {
                user: UserId("bob".into()),
                display_name: None,
                email: None,
            },
        ]
    }

    pub(super) fn batches() -> Vec<Batch> {
        let mut batches = v1::batches();
        batches.push(Batch::new().with(Mutation::PutIdentities(identities())));
        batches
    }

    pub(super) fn expected() -> Contents {
        let mut contents = v1::expected();
        contents.identities.identities =
            identities().into_iter().map(|i| (i.user.clone(), i)).collect();
        contents
    }
}

/// Format 3: a pending run is one record naming its last seq.
mod v3 {
    use super::*;

    fn offline() -> ModelId {
        ModelId::new("made-offline").unwrap()
    }

    /// The changes 3..=5 composed into one run.
    fn run() -> PendingOperation {
        PendingOperation::run(
            3,
            5,
            op(1, OperationKind::StringSet { value: "three changes".into() }).into(),
        )
    }

    pub(super) fn batches() -> Vec<Batch> {
        let mut batches = v2::batches();
        batches.push(
            Batch::new()
                .with(Mutation::AppendPending { model: offline(), operations: vec![run()] }),
        );
        batches
    }

    pub(super) fn expected() -> Contents {
        let mut contents = v2::expected();
        let model = contents
            .models
            .iter_mut()
            .find(|m| m.summary.record.id == offline())
            .expect("the model made offline");
        model.summary.pending_count += 3;
        model.summary.last_pending_seq = Some(5);
        model.pending.push(run());
        contents
    }
}
