//! The store's query executor (indexes in redb, permissions, paging) against the reference
//! evaluator of `concord-query`, and indexes declared after models were stored.

use concord_ot::{Document, ElementId, Value, ValueData};
use concord_protocol::{
    ErrorCode, PermissionGrants, Permissions, QueryPage, RequestId, ServerMessage, ServerResponse,
    User,
};
use concord_query::{Candidate, IndexKey, Path, Query};
use concord_sync::host::{HostConfig, QueryLimits, QueryRead, wire_row};
use proptest::prelude::*;

use super::*;

const DOMAIN: &str = "acme/notes";

fn notes() -> CollectionId {
    CollectionId::new("notes").unwrap()
}

fn user(id: &str) -> User {
    User { id: UserId(id.into()), display_name: None, anonymous: false }
}

/// One generated model: its fields (absent when `None`), whether only its creator may read
/// it, and its creator.
#[derive(Debug, Clone)]
struct Spec {
    n: Option<ValueData>,
    s: Option<ValueData>,
    private: bool,
    creator: &'static str,
}

fn document(spec: &Spec) -> Document {
    let mut entries = BTreeMap::new();
    for (i, (name, field)) in [("n", &spec.n), ("s", &spec.s)].into_iter().enumerate() {
        if let Some(data) = field {
            entries.insert(
                name.to_string(),
                Value::new(ElementId::new(0, i as u64 + 1), data.clone()),
            );
        }
    }
    Document::new(Value::new(ElementId::new(0, 0), ValueData::Object(entries))).unwrap()
}

fn indexes() -> BTreeMap<CollectionId, Vec<Path>> {
    [(notes(), vec![Path::parse("n").unwrap(), Path::parse("s").unwrap()])].into()
}

/// The writes the model host makes for a creation in an indexed collection.
fn creation(id: &str, spec: &Spec, indexed: &[Path]) -> Vec<Write> {
    let model = ModelId::new(id).unwrap();
    let mut grants = PermissionGrants::default();
    if spec.private {
        grants.override_collection = true;
        grants.world = Permissions::NONE;
    }
    let record = ModelRecord {
        collection: notes(),
        created_at: Timestamp(5),
        nonce: None,
        creator: Some(UserId(spec.creator.into())),
        grants,
    };
    let data = document(spec);
    let keys = indexed.iter().map(|p| (p.clone(), IndexKey::of_document(p, &data))).collect();
    let snapshot = ModelSnapshot {
        collection: notes(),
        version: 0,
        created_at: Timestamp(5),
        modified_at: Timestamp(5),
        data,
    };
    vec![
        Write::CreateModel { model: model.clone(), record, snapshot },
        Write::IndexModel { model, collection: notes(), keys },
    ]
}

fn write_all(store: &RedbStore, writes: Vec<Write>) {
    store.commit_logged(&[DomainWrites { domain: Arc::from(DOMAIN), writes }]).unwrap();
}

fn ask(
    store: &RedbStore,
    text: &str,
    who: &str,
    limits: &QueryLimits,
) -> Result<QueryPage, ErrorReply> {
    let read =
        QueryRead { request: RequestId(1), user: user(who), query: Query::parse(text).unwrap() };
    let config = HostConfig { indexes: indexes(), ..HostConfig::default() };
    match store.query(DOMAIN, &read, &config, limits) {
        ServerMessage::Response { response: ServerResponse::QueryResult(page), .. } => Ok(page),
        ServerMessage::Error { error, .. } => Err(error),
        other => panic!("{other:?}"),
    }
}

use concord_protocol::ErrorReply;

/// What the reference evaluator answers over the models `who` may read.
fn reference(
    specs: &[Spec],
    text: &str,
    who: &str,
    max_rows: u64,
) -> (Vec<concord_protocol::QueryRow>, u64) {
    let mut query = Query::parse(text).unwrap();
    query.limit = Some(query.limit.map_or(max_rows, |l| l.min(max_rows)));
    let ids: Vec<String> = (0..specs.len()).map(|i| format!("m{i:03}")).collect();
    let values: Vec<Value> = specs.iter().map(|s| document(s).to_value()).collect();
    let candidates =
        specs.iter().enumerate().filter(|(_, s)| !s.private || s.creator == who).map(|(i, _)| {
            Candidate { id: &ids[i], version: 0, created: 5, modified: 5, data: &values[i] }
        });
    let result = query.evaluate(candidates);
    let rows = result
        .rows
        .into_iter()
        .map(|row| {
            let model = ModelId::new(row.id.clone()).unwrap();
            wire_row(row, model, &notes())
        })
        .collect();
    (rows, result.total)
}

fn field() -> impl Strategy<Value = Option<ValueData>> {
    prop_oneof![
        Just(None),
        Just(Some(ValueData::Null)),
        Just(Some(ValueData::Boolean(true))),
        (-3i32..4).prop_map(|n| Some(ValueData::Number(f64::from(n) / 2.0))),
        prop::sample::select(vec!["a", "b", "bb", "c"])
            .prop_map(|s| Some(ValueData::String(s.into()))),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (field(), field(), any::<bool>(), prop::sample::select(vec!["ann", "bob"]))
        .prop_map(|(n, s, private, creator)| Spec { n, s, private, creator })
}

fn query_text() -> impl Strategy<Value = String> {
    let condition = prop_oneof![
        Just(String::new()),
        (prop::sample::select(vec!["=", "<", "<=", ">", ">=", "!="]), -3i32..4)
            .prop_map(|(op, n)| format!(" WHERE n {op} {}", f64::from(n) / 2.0)),
        (prop::sample::select(vec!["=", "<", ">="]), prop::sample::select(vec!["a", "b", "c"]))
            .prop_map(|(op, s)| format!(" WHERE s {op} '{s}'")),
        (-3i32..4, prop::sample::select(vec!["a", "b"]))
            .prop_map(|(n, s)| format!(" WHERE n >= {} AND s = '{s}'", f64::from(n) / 2.0)),
        (-3i32..4).prop_map(|n| format!(" WHERE n > {} OR s = 'a'", f64::from(n) / 2.0)),
        Just(" WHERE s IS NULL".to_string()),
    ];
    let order = prop::sample::select(vec![
        "",
        " ORDER BY n",
        " ORDER BY n DESC",
        " ORDER BY s",
        " ORDER BY s DESC, n",
    ]);
    let page = prop::sample::select(vec!["", " LIMIT 3", " LIMIT 2 OFFSET 3", " OFFSET 4"]);
    (condition, order, page).prop_map(|(c, o, p)| format!("SELECT * FROM notes{c}{o}{p}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The redb index executor gives the reference evaluator's rows, in its order, and its
    /// total, over the models the user may read.
    #[test]
    fn the_index_executor_agrees_with_the_reference_evaluator(
        specs in prop::collection::vec(spec(), 0..24),
        queries in prop::collection::vec(query_text(), 1..6),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open_indexed(dir.path(), &indexes()).unwrap();
        let indexed = indexes().remove(&notes()).unwrap();
        let writes = specs
            .iter()
            .enumerate()
            .flat_map(|(i, spec)| creation(&format!("m{i:03}"), spec, &indexed))
            .collect();
        write_all(&store, writes);
        let limits = QueryLimits { max_scanned: 1_000, max_rows: 5, ..QueryLimits::default() };
        for text in &queries {
            let page = ask(&store, text, "bob", &limits).unwrap();
            let (rows, total) = reference(&specs, text, "bob", limits.max_rows);
            prop_assert_eq!(&page.rows, &rows, "{}", text);
            prop_assert_eq!(page.total, total, "{}", text);
            prop_assert!(page.scanned as usize <= specs.len());
        }
    }
}

/// Forty models whose `s` is 10,000 bytes long, in a store with or without indexes, and the
/// answer to `text` within a budget of 150,000 bytes.
fn ask_large(indexed: bool, text: &str) -> (Result<QueryPage, ErrorReply>, Vec<Spec>) {
    let large = |i: u32| Spec {
        n: Some(ValueData::Number(f64::from(i))),
        s: Some(ValueData::String(format!("{i:03}{}", "x".repeat(10_000)))),
        private: false,
        creator: "ann",
    };
    let specs: Vec<Spec> = (0..40).map(large).collect();
    let dir = tempfile::tempdir().unwrap();
    let (store, paths) = if indexed {
        let paths = indexes().remove(&notes()).unwrap();
        (RedbStore::open_indexed(dir.path(), &indexes()).unwrap(), paths)
    } else {
        (RedbStore::open(dir.path()).unwrap(), Vec::new())
    };
    let writes =
        specs.iter().enumerate().flat_map(|(i, s)| creation(&format!("m{i:03}"), s, &paths));
    write_all(&store, writes.collect());
    let read =
        QueryRead { request: RequestId(1), user: user("bob"), query: Query::parse(text).unwrap() };
    let config = HostConfig {
        indexes: if indexed { indexes() } else { BTreeMap::new() },
        ..HostConfig::default()
    };
    let limits = QueryLimits { max_held_bytes: 150_000, ..QueryLimits::default() };
    let answer = match store.query(DOMAIN, &read, &config, &limits) {
        ServerMessage::Response { response: ServerResponse::QueryResult(page), .. } => Ok(page),
        ServerMessage::Error { error, .. } => Err(error),
        other => panic!("{other:?}"),
    };
    (answer, specs)
}

#[test]
fn a_query_holds_at_most_its_byte_budget_reading_its_page_again_when_it_must() {
    let too_large = |answer: Result<QueryPage, ErrorReply>, says: &str| {
        let error = answer.expect_err("over the budget");
        assert_eq!(error.code, ErrorCode::MODEL_TOO_LARGE, "{error:?}");
        assert!(error.message.contains(says), "{error:?}");
        assert_eq!(error.details.get("limit").map(String::as_str), Some("150000"));
    };
    for indexed in [false, true] {
        // Within the budget: ranked without an index, the rows held as they come pass it
        // (ten of 20 KB, keys and rows), so they are dropped and the page's read again.
        for text in [
            "SELECT * FROM notes ORDER BY s DESC LIMIT 5",
            "SELECT * FROM notes ORDER BY n LIMIT 5 OFFSET 30",
            "SELECT n FROM notes ORDER BY n DESC LIMIT 20",
        ] {
            let (answer, specs) = ask_large(indexed, text);
            let page = answer.unwrap_or_else(|e| panic!("{text} (indexed: {indexed}): {e:?}"));
            let (rows, total) = reference(&specs, text, "bob", 1_000);
            assert_eq!(page.rows, rows, "{text} (indexed: {indexed})");
            assert_eq!(page.total, total);
        }
        // A page of twenty 10 KB rows is over it, in index order or ranked.
        let (answer, _) = ask_large(indexed, "SELECT * FROM notes ORDER BY n LIMIT 20");
        too_large(answer, "fewer rows");
    }
    // Ranking by `s` without an index holds up to 40 of its 10 KB values: over it.
    let (answer, _) = ask_large(false, "SELECT n FROM notes ORDER BY s LIMIT 20");
    too_large(answer, "ORDER BY");
    // With the index, the same query holds nothing but its small rows.
    let (answer, _) = ask_large(true, "SELECT n FROM notes ORDER BY s LIMIT 20");
    assert_eq!(answer.expect("in index order").rows.len(), 20);
}

fn public(n: f64) -> Spec {
    Spec { n: Some(ValueData::Number(n)), s: None, private: false, creator: "ann" }
}

#[test]
fn an_indexed_equality_reads_only_its_range_and_a_scan_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open_indexed(dir.path(), &indexes()).unwrap();
    let indexed = indexes().remove(&notes()).unwrap();
    let writes = (0..40)
        .flat_map(|i| creation(&format!("m{i:03}"), &public(f64::from(i % 10)), &indexed))
        .collect();
    write_all(&store, writes);
    let limits = QueryLimits { max_scanned: 20, max_rows: 100, ..QueryLimits::default() };
    let page = ask(&store, "SELECT * FROM notes WHERE n = 3", "bob", &limits).unwrap();
    assert_eq!((page.total, page.scanned, page.index.as_deref()), (4, 4, Some("n")));
    // Not indexed: the whole collection, past the limit.
    let error = ask(&store, "SELECT * FROM notes WHERE body = 'x'", "bob", &limits).unwrap_err();
    assert_eq!(error.code, ErrorCode::QUERY_SCAN_LIMIT);
    // ORDER BY the index with LIMIT: the first rows come in index order.
    let page =
        ask(&store, "SELECT n FROM notes WHERE n >= 8 ORDER BY n DESC LIMIT 3", "bob", &limits)
            .unwrap();
    assert_eq!(page.total, 8);
    let ids: Vec<&str> = page.rows.iter().map(|r| r.model.as_str()).collect();
    assert_eq!(ids, ["m039", "m029", "m019"]);
}

#[test]
fn an_index_declared_later_is_built_on_open_and_dropped_when_no_longer_declared() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = RedbStore::open(dir.path()).unwrap();
        let writes = (0..12)
            .flat_map(|i| creation(&format!("m{i:03}"), &public(f64::from(i % 3)), &[]))
            .collect();
        write_all(&store, writes);
        // Two commits after the snapshot change m000's n from 0 to 2, one at a time.
        for version in 1..=2 {
            let op = concord_ot::DiscreteOperation::new(
                ElementId::new(0, 1),
                concord_ot::OperationKind::NumberDelta { delta: 1.0 },
            );
            let commit = concord_sync::CommitRecord {
                model: ModelId::new("m000").unwrap(),
                replica: concord_ot::ReplicaId(3),
                seq: version,
                operation: CommittedOperation {
                    version,
                    author: concord_protocol::SessionId("s".into()),
                    timestamp: Timestamp(8 + version as i64),
                    operation: op.into(),
                },
            };
            write_all(&store, vec![Write::Commit(commit)]);
        }
    }
    let store = RedbStore::open_indexed(dir.path(), &indexes()).unwrap();
    let limits = QueryLimits::default();
    let page = ask(&store, "SELECT * FROM notes WHERE n = 2", "bob", &limits).unwrap();
    assert_eq!(page.index.as_deref(), Some("n"));
    let mut ids: Vec<&str> = page.rows.iter().map(|r| r.model.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["m000", "m002", "m005", "m008", "m011"]);
    assert_eq!(page.scanned, 5);
    let m000 = page.rows.iter().find(|r| r.model.as_str() == "m000").unwrap();
    assert_eq!((m000.version, m000.modified_at), (2, Timestamp(10)));
    drop(store);
    // Declared no more: its entries go.
    let store = RedbStore::open(dir.path()).unwrap();
    let txn = store.db.begin_read().unwrap();
    assert_eq!(txn.open_table(INDEX_ENTRIES).unwrap().iter().unwrap().count(), 0);
}

#[test]
fn a_deleted_model_leaves_its_collection_and_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbStore::open_indexed(dir.path(), &indexes()).unwrap();
    let indexed = indexes().remove(&notes()).unwrap();
    let writes =
        (0..3).flat_map(|i| creation(&format!("m{i:03}"), &public(1.0), &indexed)).collect();
    write_all(&store, writes);
    write_all(
        &store,
        vec![Write::DeleteModel { model: ModelId::new("m001").unwrap(), at: Timestamp(7) }],
    );
    let limits = QueryLimits::default();
    for text in ["SELECT * FROM notes WHERE n = 1", "SELECT * FROM notes"] {
        let page = ask(&store, text, "bob", &limits).unwrap();
        let ids: Vec<&str> = page.rows.iter().map(|r| r.model.as_str()).collect();
        assert_eq!(ids, ["m000", "m002"], "{text}");
        assert_eq!(page.scanned, 2);
    }
}
