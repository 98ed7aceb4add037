//! The contract of [`ServerStore`], run on both backends. Every store format's scenario
//! (the writes of formats 1 to 6, which the format tests check value by value on redb) is
//! committed through the trait to a new redb store and to a new PostgreSQL database; then
//! every read the server makes — loads, operation ranges, collections, replica owners,
//! users, identities, history answers and query answers — must come back the same from both. What only
//! PostgreSQL does (constraints, migrations, connecting) is tested after.

use std::collections::BTreeSet;

use concord_protocol::{HistoryStart, RequestId};
use concord_query::Query;
use concord_sync::host::{HistoryQuery, HistoryRead, HostConfig, QueryLimits, QueryRead};

use super::*;
use std::time::Duration;

use concord_sync::lease::LeaseConfig;

use crate::store::postgres::cluster::{Acquired, LEASE_CHECK, NodeLeases};
use crate::store::postgres::{PostgresStore, SCHEMA_VERSION};
use crate::store::{DomainWrites, ServerStore, Store, StoreError};
use crate::test_postgres::{TestPostgres, shared};

/// Every domain's writes of the format scenario, one commit per step.
fn scenario() -> Vec<(&'static str, Vec<Write>)> {
    v6::writes()
}

async fn commit_all(store: &Store) {
    for (domain, writes) in scenario() {
        store.commit(&[DomainWrites { domain: Arc::from(domain), writes }]).await.unwrap();
    }
}

async fn redb_store(dir: &Path) -> Store {
    Arc::new(RedbStore::open_indexed(dir, &v5::indexes()).unwrap())
}

async fn postgres_store(cluster: &TestPostgres, database: &str) -> Store {
    let url = cluster.url(database);
    Arc::new(PostgresStore::connect(&url, &v5::indexes()).await.unwrap())
}

/// The version of the last operation `store` holds of `key` (which has some).
async fn last_version(store: &dyn ServerStore, key: &ModelKey) -> u64 {
    let operations = store.operations(key, 0, u64::MAX, usize::MAX).await.unwrap();
    operations.last().expect("the model has operations").operation.version
}

/// What the scenario names: models, collections, users and replicas, per domain.
#[derive(Default)]
struct Names {
    models: BTreeSet<(String, String)>,
    collections: BTreeSet<(String, String)>,
    users: BTreeSet<(String, String)>,
    replicas: BTreeSet<(String, u64)>,
}

fn names() -> Names {
    let mut names = Names::default();
    for (domain, writes) in scenario() {
        let d = domain.to_owned();
        for write in writes {
            match write {
                Write::CreateModel { model, record, .. } => {
                    names.models.insert((d.clone(), model.as_str().into()));
                    names.collections.insert((d.clone(), record.collection.as_str().into()));
                }
                Write::DeleteModel { model, .. } | Write::Snapshot { model, .. } => {
                    names.models.insert((d.clone(), model.as_str().into()));
                }
                Write::Commit(record) => {
                    names.models.insert((d.clone(), record.model.as_str().into()));
                    names.replicas.insert((d.clone(), record.replica.0));
                }
                Write::PutCollection { collection, .. } => {
                    names.collections.insert((d.clone(), collection.as_str().into()));
                }
                Write::PutUser { user } => {
                    names.users.insert((d.clone(), user.id.0.clone()));
                }
                Write::BindReplica { replica, .. } => {
                    names.replicas.insert((d.clone(), replica.0));
                }
                _ => {}
            }
        }
    }
    // Ones nobody wrote: read as absent from both.
    names.models.insert(("acme/notes".into(), "never-written".into()));
    names.replicas.insert(("acme/notes".into(), u64::MAX));
    names
}

/// Every read of `store`, as text, in a fixed order.
async fn every_read(store: &Store) -> Vec<String> {
    let names = names();
    let mut reads = Vec::new();
    // Every stored model's key, two at a time.
    let mut after = None;
    loop {
        let page = store.model_keys(after.clone(), 2).await;
        reads.push(format!("model keys after {after:?}: {page:?}"));
        match page {
            Ok(page) if page.len() == 2 => after = page.last().cloned(),
            _ => break,
        }
    }
    for (domain, model) in &names.models {
        let key = key(domain, model);
        let loaded = store.load(&key).await;
        reads.push(format!("load {domain}/{model}: {loaded:?}"));
        let through = match &loaded {
            Ok(Loaded::Model(m)) => m.operations.last().map_or(m.snapshot.version, |o| o.version),
            _ => 0,
        };
        for (after, to, limit) in [(0, u64::MAX, usize::MAX), (1, 3, 1), (2, 2, 5), (0, 4, 2)] {
            let operations = store.operations(&key, after, to, limit).await;
            reads.push(format!(
                "operations {domain}/{model} ({after}, {to}] {limit}: {operations:?}"
            ));
        }
        for at_or_before in [0, 1, through, u64::MAX] {
            let checkpoint = store.checkpoint_at_or_before(&key, at_or_before).await;
            reads.push(format!(
                "checkpoint {domain}/{model} at or before {at_or_before}: {checkpoint:?}"
            ));
        }
        let mut queries = vec![HistoryQuery::Open];
        for start in 0..=through {
            for max_operations in [1, 100] {
                queries.push(HistoryQuery::Fetch {
                    start: HistoryStart::Version(start),
                    checkpoint: true,
                    max_operations,
                    max_bytes: u32::MAX,
                });
            }
        }
        queries.push(HistoryQuery::Fetch {
            start: HistoryStart::Time(Timestamp(1_700_000_200_003)),
            checkpoint: false,
            max_operations: 10,
            max_bytes: u32::MAX,
        });
        for query in queries {
            let read = HistoryRead {
                request: RequestId(1),
                model: key.model.clone(),
                collection: CollectionId::new("notes").unwrap(),
                created_at: Timestamp(0),
                through,
                modified_at: Timestamp(0),
                checkpoint_every: 2,
                query,
            };
            let answer = store.history(&key, &read).await;
            reads.push(format!("history {domain}/{model} {query:?}: {answer:?}"));
        }
    }
    for (domain, collection) in &names.collections {
        let id = CollectionId::new(collection).unwrap();
        reads.push(format!(
            "collection {domain}/{collection}: {:?}",
            store.collection(domain, &id).await
        ));
    }
    for (domain, replica) in &names.replicas {
        let owner = store.replica_owner(domain, ReplicaId(*replica)).await;
        reads.push(format!("replica {domain}/{replica}: {owner:?}"));
    }
    for (domain, user) in &names.users {
        reads.push(format!(
            "user {domain}/{user}: {:?}",
            store.user(domain, &UserId(user.clone())).await
        ));
    }
    let config = Arc::new(HostConfig { indexes: v5::indexes(), ..HostConfig::default() });
    let domains: BTreeSet<&String> = names.models.iter().map(|(d, _)| d).collect();
    for domain in domains.iter().copied().chain([&"nobody/here".to_owned()]) {
        for max_users in [0, 1, 2, 100] {
            let identities = store.identities(domain, max_users).await;
            reads.push(format!("identities {domain} {max_users}: {identities:?}"));
        }
    }
    for domain in domains {
        for text in [
            "SELECT title FROM notes",
            "SELECT n FROM notes WHERE n >= 5",
            "SELECT n FROM notes WHERE n < 5 ORDER BY n DESC",
            "SELECT n FROM notes ORDER BY n DESC LIMIT 1",
            "SELECT title FROM missing",
        ] {
            for limits in
                [QueryLimits::default(), QueryLimits { max_scanned: 1, ..QueryLimits::default() }]
            {
                let read = QueryRead {
                    request: RequestId(1),
                    user: User { id: user("ann"), display_name: None, anonymous: false },
                    query: Query::parse(text).unwrap(),
                };
                let answer = store.query(domain, &read, &config, &limits).await;
                reads.push(format!("query {domain} {text} {limits:?}: {answer:?}"));
            }
        }
    }
    reads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_answer_every_read_of_the_format_scenario_alike() {
    let Some(cluster) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let redb = redb_store(dir.path()).await;
    let postgres = postgres_store(&cluster, "contract").await;
    commit_all(&redb).await;
    commit_all(&postgres).await;
    let (expected, got) = (every_read(&redb).await, every_read(&postgres).await);
    for (expected, got) in expected.iter().zip(&got) {
        assert_eq!(got, expected);
    }
    assert_eq!(expected.len(), got.len());
    // The comparison is not between two empty answers.
    let loaded = expected.iter().filter(|r| r.starts_with("load") && r.contains("Model(")).count();
    assert!(loaded >= 3, "{loaded} models load");
    let rows = expected.iter().filter(|r| r.contains("QueryResult") && r.contains("story")).count();
    assert!(rows >= 1, "a query finds story");
    assert!(expected.iter().any(|r| r.contains("HistoryPage") && r.contains("Some(UserId")));
    assert!(expected.iter().any(|r| r.starts_with("identities") && r.contains("Ann B.")));
    // And what PostgreSQL holds is still there for a new connection, as for a restart.
    let reopened = postgres_store(&cluster, "contract").await;
    assert_eq!(every_read(&reopened).await, expected);
}

/// `concord store copy`: the format scenario written to the embedded store, copied into an
/// empty PostgreSQL database, answers every read there as it did from redb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redb_store_copied_into_postgres_answers_every_read_alike() {
    use crate::maintenance::{MaintenanceError, copy_store};
    let Some(cluster) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let redb = redb_store(dir.path()).await;
    commit_all(&redb).await;
    let expected = every_read(&redb).await;
    drop(redb);
    let from = crate::StoreLocation {
        data_dir: dir.path().to_owned(),
        store: None,
        indexes: v5::indexes(),
    };
    let to = crate::StoreUrl::from(cluster.url("copied"));
    let mut progress = Vec::new();
    let copied = copy_store(&from, &to, |count| progress.push(count)).await.unwrap();
    assert_eq!(progress.last(), Some(&copied));
    assert!(copied > 20, "{copied} records copied");

    let postgres = postgres_store(&cluster, "copied").await;
    let got = every_read(&postgres).await;
    for (expected, got) in expected.iter().zip(&got) {
        assert_eq!(got, expected);
    }
    assert_eq!(expected.len(), got.len());
    drop(postgres);
    // Once is all: a database that holds a store is never copied into.
    let again = copy_store(&from, &to, |_| {}).await;
    assert!(matches!(again, Err(MaintenanceError::NotEmpty(_))), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_holds_what_the_format_tests_expect_when_written_through_the_trait() {
    let dir = tempfile::tempdir().unwrap();
    let store = redb_store(dir.path()).await;
    commit_all(&store).await;
    drop(store);
    v6::check(&RedbStore::open_indexed(dir.path(), &v5::indexes()).unwrap());
}

fn commit_at(model: &str, version: u64, seq: u64) -> Write {
    commit_inserting(model, version, seq, "x")
}

/// A commit at `version` of an operation inserting `text`.
fn commit_inserting(model: &str, version: u64, seq: u64, text: &str) -> Write {
    let kind = OperationKind::StringSplice { index: 0, delete_count: 0, insert: text.into() };
    let operation = CommittedOperation {
        version,
        author: SessionId("s".into()),
        timestamp: Timestamp(version as i64),
        operation: DiscreteOperation::new(ElementId::new(0, 1), kind).into(),
    };
    Write::Commit(CommitRecord {
        model: ModelId::new(model).unwrap(),
        operation,
        replica: ReplicaId(7),
        seq,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_second_operation_at_one_version_and_keeps_nothing_of_its_commit() {
    let Some(cluster) = shared() else { return };
    let store = postgres_store(&cluster, "duplicate").await;
    commit_all(&store).await;
    let doc = key("acme/notes", "doc");
    let before = store.operations(&doc, 0, u64::MAX, usize::MAX).await.unwrap();
    let last = before.last().expect("doc has operations").operation.version;
    let newcomer = User { id: user("zed"), display_name: None, anonymous: false };
    let batch = vec![DomainWrites {
        domain: Arc::from("acme/notes"),
        writes: vec![Write::PutUser { user: newcomer }, commit_at("doc", last, 99)],
    }];
    let error = store.commit(&batch).await.expect_err("a duplicate version is refused");
    assert!(
        matches!(error, StoreError::VersionTaken { version, .. } if version == last),
        "{error}"
    );
    assert_eq!(store.operations(&doc, 0, u64::MAX, usize::MAX).await.unwrap(), before);
    assert_eq!(store.user("acme/notes", &user("zed")).await.unwrap(), None, "all or nothing");
    // Concurrent appends of one version (different operations): exactly one commits.
    let racers = (0..4).map(|seq| {
        let store = store.clone();
        tokio::spawn(async move {
            let writes = vec![commit_inserting("doc", last + 1, 100 + seq, &format!("r{seq}"))];
            store.commit(&[DomainWrites { domain: Arc::from("acme/notes"), writes }]).await
        })
    });
    let mut committed = 0;
    for racer in racers.collect::<Vec<_>>() {
        committed += usize::from(racer.await.unwrap().is_ok());
    }
    assert_eq!(committed, 1);
    assert_eq!(store.operations(&doc, last, u64::MAX, usize::MAX).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_migrates_once_when_servers_start_together_and_refuses_a_newer_schema() {
    let Some(cluster) = shared() else { return };
    let url = cluster.url("schema");
    let none = BTreeMap::new();
    let starts = (0..4).map(|_| PostgresStore::connect(&url, &none));
    for started in futures_util::future::join_all(starts).await {
        started.unwrap();
    }
    let rows =
        cluster.sql_in("schema", "SELECT count(*) || ' ' || max(version) FROM concord_schema");
    assert_eq!(rows, format!("1 {SCHEMA_VERSION}"), "one migration recorded");
    cluster.sql_in("schema", "INSERT INTO concord_schema (version) VALUES (99)");
    let error = PostgresStore::connect(&url, &BTreeMap::new()).await.unwrap_err();
    assert!(matches!(error, StoreError::NewerSchema { found: 99, supported: SCHEMA_VERSION }));
    let message = error.to_string();
    assert!(
        message.contains("schema 99") && message.contains(&format!("schema {SCHEMA_VERSION}")),
        "{message}"
    );
}

/// A server started on a database fences the one before it. A transaction still open on
/// the old writer's epoch (a killed server's last commit, which PostgreSQL finishes on its
/// own) holds the new server's start until it ends, so the new one loads what it wrote;
/// afterwards every commit of the old one is refused as `Fenced` and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_on_the_database_fences_the_one_before() {
    let Some(cluster) = shared() else { return };
    let url = cluster.url("fencing");
    let old = postgres_store(&cluster, "fencing").await;
    commit_all(&old).await;
    let doc = key("acme/notes", "doc");
    let before = old.operations(&doc, 0, u64::MAX, usize::MAX).await.unwrap();
    let last = before.last().expect("doc has operations").operation.version;

    let (orphan, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    orphan
        .batch_execute("BEGIN; SELECT epoch FROM concord_writer WHERE id = 1 FOR SHARE")
        .await
        .unwrap();
    orphan
        .batch_execute(
            "INSERT INTO identities (domain, user_id, display_name, seen)
             VALUES ('acme/notes', 'late', 'Late Commit', 1)",
        )
        .await
        .unwrap();
    let starting = tokio::spawn({
        let url = url.clone();
        async move { PostgresStore::connect(&url, &v5::indexes()).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!starting.is_finished(), "the new server waits for the old writer's transaction");
    orphan.batch_execute("COMMIT").await.unwrap();
    let new: Store = Arc::new(starting.await.unwrap().unwrap());
    let identities = new.identities("acme/notes", 1_000).await.unwrap();
    assert!(
        identities.iter().any(|identity| identity.user.0 == "late"),
        "the new server sees the old writer's last commit"
    );

    let late = vec![DomainWrites {
        domain: Arc::from("acme/notes"),
        writes: vec![commit_inserting("doc", last + 1, 200, "old")],
    }];
    let error = old.commit(&late).await.expect_err("the old server is fenced");
    assert!(matches!(error, StoreError::Fenced { .. }), "{error}");
    assert!(error.to_string().contains("another server started"), "{error}");
    assert_eq!(new.operations(&doc, 0, u64::MAX, usize::MAX).await.unwrap(), before);
    let writes = vec![commit_inserting("doc", last + 1, 201, "new")];
    new.commit(&[DomainWrites { domain: Arc::from("acme/notes"), writes }]).await.unwrap();
    assert_eq!(new.operations(&doc, last, u64::MAX, usize::MAX).await.unwrap().len(), 1);
}

#[tokio::test]
async fn postgres_unreachable_at_start_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://concord@127.0.0.1:{port}/nothing");
    let error = PostgresStore::connect(&url, &BTreeMap::new()).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}/nothing")),
        "{message}"
    );
    let error = PostgresStore::connect("postgres://host:port/database", &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(error.to_string().contains("invalid PostgreSQL address"), "{error}");
}

/// Group commit on PostgreSQL: jobs of two models queued before the writer runs go into
/// one transaction (their rows share one `xmin`, and the metrics count one commit of 20
/// jobs), and each job is then reported durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_commits_jobs_queued_together_on_postgres_in_one_transaction() {
    let Some(cluster) = shared() else { return };
    let store = postgres_store(&cluster, "writer").await;
    commit_all(&store).await;
    let doc = key("acme/notes", "doc");
    let last = last_version(&*store, &doc).await;
    let (sender, receiver) = tokio::sync::mpsc::channel(32);
    let mut waits = Vec::new();
    for i in 1..=10 {
        for writes in [vec![commit_at("doc", last + i, 200 + i)], vec![commit_at("other", i, i)]] {
            let (done, wait) = tokio::sync::oneshot::channel();
            let job =
                Job { domain: Arc::from("acme/notes"), writes, done: Some(done), ..Job::default() };
            sender.send(job).await.unwrap();
            waits.push(wait);
        }
    }
    drop(sender);
    let metrics = crate::metrics::Metrics::new();
    crate::store::write_loop(&*store, receiver, CancellationToken::new(), Duration::ZERO, &metrics)
        .await;
    for wait in waits {
        wait.await.unwrap().unwrap();
    }
    let after = store.operations(&doc, last, u64::MAX, usize::MAX).await.unwrap();
    assert_eq!(
        after.iter().map(|o| o.operation.version).collect::<Vec<_>>(),
        (last + 1..=last + 10).collect::<Vec<_>>()
    );
    let other = key("acme/notes", "other");
    assert_eq!(store.operations(&other, 0, u64::MAX, usize::MAX).await.unwrap().len(), 10);
    let transactions = cluster.sql_in(
        "writer",
        &format!(
            "SELECT count(DISTINCT xmin::text) FROM operations WHERE domain = 'acme/notes' \
             AND (model = 'other' OR (model = 'doc' AND version > {last}))"
        ),
    );
    assert_eq!(transactions, "1", "the 20 jobs' operations were written by one transaction");
    let rendered = metrics.render();
    let figure = |name: &str| {
        let line = rendered.lines().find(|l| l.starts_with(&format!("{name} ")));
        let value = line.and_then(|l| l.split_whitespace().nth(1)).map(str::parse::<f64>);
        value.unwrap_or_else(|| panic!("no {name} in\n{rendered}")).unwrap()
    };
    assert_eq!(figure("concord_commit_group_jobs_count"), 1.0, "one commit");
    assert_eq!(figure("concord_commit_group_jobs_sum"), 20.0, "of every job");
}

/// Every connection of the store commits with `synchronous_commit = on`, even on a
/// database whose default says off, so that an acknowledged commit is in the WAL on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stores_connections_commit_synchronously_whatever_the_database_default() {
    let Some(cluster) = shared() else { return };
    let url = cluster.url("asynchronous");
    cluster.sql("ALTER DATABASE asynchronous SET synchronous_commit = off");
    // Any other connection gets the database's default.
    let (plain, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let row = plain.query_one("SHOW synchronous_commit", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "off");
    let store = PostgresStore::connect(&url, &BTreeMap::new()).await.unwrap();
    // Three pooled connections held at once: the pool opens new ones for them.
    let settings = store.pooled_settings("synchronous_commit", 3).await.unwrap();
    assert_eq!(settings, ["on", "on", "on"]);
}

/// On either backend: appending a different operation at a version already stored is
/// refused ([`StoreError::VersionTaken`]) and its whole batch writes nothing; writing the
/// stored operation again (a commit sent twice, its first outcome unknown) changes nothing.
async fn a_taken_version_is_refused_and_the_same_operation_again_changes_nothing(store: Store) {
    commit_all(&store).await;
    let doc = key("acme/notes", "doc");
    let before = store.operations(&doc, 0, u64::MAX, usize::MAX).await.unwrap();
    let last = before.last().expect("doc has operations").operation.clone();
    let newcomer = User { id: user("zed"), display_name: None, anonymous: false };
    let batch = vec![DomainWrites {
        domain: Arc::from("acme/notes"),
        writes: vec![
            Write::PutUser { user: newcomer.clone() },
            commit_inserting("doc", last.version, 99, "another"),
        ],
    }];
    let error = store.commit(&batch).await.expect_err("a taken version is refused");
    match &error {
        StoreError::VersionTaken { domain, model, version } => {
            assert_eq!(
                (domain.as_str(), model.as_str(), *version),
                ("acme/notes", "doc", last.version)
            );
        }
        other => panic!("not VersionTaken: {other}"),
    }
    assert!(error.to_string().contains("different operation at version"), "{error}");
    assert_eq!(store.operations(&doc, 0, u64::MAX, usize::MAX).await.unwrap(), before);
    assert_eq!(store.user("acme/notes", &user("zed")).await.unwrap(), None, "all or nothing");

    // The stored operation again, with the rest of its batch: accepted, nothing doubled.
    let again = Write::Commit(CommitRecord {
        model: ModelId::new("doc").unwrap(),
        operation: last.clone(),
        replica: ReplicaId(7),
        seq: 500,
    });
    let next = commit_inserting("doc", last.version + 1, 501, "next");
    let batch = vec![DomainWrites {
        domain: Arc::from("acme/notes"),
        writes: vec![Write::PutUser { user: newcomer }, again, next],
    }];
    store.commit(&batch).await.expect("the same operation again is no conflict");
    let after = store.operations(&doc, 0, u64::MAX, usize::MAX).await.unwrap();
    assert_eq!(after.len(), before.len() + 1, "the stored one once, the next one added");
    assert_eq!(after[..before.len()], before[..]);
    assert!(store.user("acme/notes", &user("zed")).await.unwrap().is_some());
}

#[tokio::test]
async fn redb_refuses_a_taken_version_and_takes_the_same_operation_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = redb_store(dir.path()).await;
    a_taken_version_is_refused_and_the_same_operation_again_changes_nothing(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_taken_version_and_takes_the_same_operation_again() {
    let Some(cluster) = shared() else { return };
    let store = postgres_store(&cluster, "taken").await;
    a_taken_version_is_refused_and_the_same_operation_again_changes_nothing(store).await;
}

/// A store of a cluster node on `database`: its id and leases. It believes its leases
/// for `belief` (the database keeps them for the time each request asks).
async fn node_store(
    cluster: &TestPostgres,
    database: &str,
    name: &str,
    belief: Duration,
) -> (PostgresStore, Arc<NodeLeases>) {
    let store = PostgresStore::connect_node(&cluster.url(database), &v5::indexes()).await.unwrap();
    let node = store.register_node(name, &format!("ws://{name}")).await.unwrap();
    let config = LeaseConfig { ttl: belief, renew_every: belief / 4, margin: belief / 4 };
    let leases = Arc::new(NodeLeases::new(node, config));
    (store.with_leases(leases.clone()), leases)
}

async fn acquire(
    store: &PostgresStore,
    leases: &NodeLeases,
    key: &ModelKey,
    ttl: Duration,
) -> Acquired {
    let sent_at = leases.now();
    let acquired = store.acquire(leases.node, key, ttl).await.unwrap();
    if let Acquired::Granted(epoch) = acquired {
        leases.lock().granted(key.clone(), epoch, sent_at);
    }
    acquired
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_a_lease_appends_nothing_and_a_released_lease_is_taken_at_once() {
    let Some(cluster) = shared() else { return };
    // Seed the database with the scenario as a single server would.
    commit_all(&postgres_store(&cluster, "leases").await).await;
    let doc = key("acme/notes", "doc");
    let write = |version, seq| {
        vec![DomainWrites {
            domain: Arc::from("acme/notes"),
            writes: vec![commit_at("doc", version, seq)],
        }]
    };
    let minute = Duration::from_secs(60);
    // Node a believes its leases for a minute; the database keeps them for 300 ms (a
    // node paused, or whose clock ran slow, past its lease).
    let (a, a_leases) = node_store(&cluster, "leases", "a", minute).await;
    let (b, b_leases) = node_store(&cluster, "leases", "b", minute).await;
    let short = Duration::from_millis(300);
    let Acquired::Granted(first) = acquire(&a, &a_leases, &doc, short).await else {
        panic!("a free lease is granted")
    };
    let last = last_version(&a, &doc).await;
    a.commit(&write(last + 1, 50)).await.unwrap();
    // While a holds it, b is told who does, and cannot write.
    match acquire(&b, &b_leases, &doc, short).await {
        Acquired::Held { node, name, url } => {
            assert_eq!((node, name.as_str(), url.as_str()), (a_leases.node, "a", "ws://a"));
        }
        other => panic!("{other:?}"),
    }
    let error = b.commit(&write(last + 2, 51)).await.expect_err("b holds no lease");
    assert!(matches!(error, StoreError::LeaseLost { .. }), "{error}");
    // Past the database's lease time b takes over, with the next epoch.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(acquire(&b, &b_leases, &doc, minute).await, Acquired::Granted(first + 1));
    // a still believes it holds the lease: the database fences its append, whole.
    assert_eq!(a_leases.epoch(&doc), Some(first));
    let mut fenced = write(last + 2, 52);
    fenced[0].writes.insert(
        0,
        Write::PutUser { user: User { id: user("late"), display_name: None, anonymous: false } },
    );
    let error = a.commit(&fenced).await.expect_err("a lost its lease");
    assert!(
        matches!(&error, StoreError::LeaseLost { model, .. } if model.as_str() == "doc"),
        "{error}"
    );
    assert_eq!(a.user("acme/notes", &user("late")).await.unwrap(), None, "nothing of it written");
    // Its renewal says so; b's keeps its lease.
    assert_eq!(a.renew(a_leases.node, &[(doc.clone(), first)], short).await.unwrap(), vec![]);
    let b_epoch = (doc.clone(), first + 1);
    assert_eq!(
        b.renew(b_leases.node, std::slice::from_ref(&b_epoch), minute).await.unwrap(),
        vec![b_epoch.clone()]
    );
    b.commit(&write(last + 2, 53)).await.unwrap();
    let stored = b.operations(&doc, last, u64::MAX, usize::MAX).await.unwrap();
    assert_eq!(
        stored.iter().map(|o| o.operation.version).collect::<Vec<_>>(),
        vec![last + 1, last + 2]
    );
    // A graceful handover: b releases, a takes the model at once, b can no longer write.
    b.release(b_leases.node, &[b_epoch]).await.unwrap();
    assert_eq!(acquire(&a, &a_leases, &doc, minute).await, Acquired::Granted(first + 2));
    let error = b.commit(&write(last + 3, 54)).await.expect_err("released");
    assert!(matches!(error, StoreError::LeaseLost { .. }), "{error}");
    a.commit(&write(last + 3, 55)).await.unwrap();
    // Writes of no model (users, identities) need no lease.
    let user_only = vec![DomainWrites {
        domain: Arc::from("acme/notes"),
        writes: vec![Write::PutUser {
            user: User { id: user("free"), display_name: None, anonymous: false },
        }],
    }];
    b.commit(&user_only).await.unwrap();
}

/// A group commit that finds one model's lease lost fails only that model's jobs: the
/// writer commits the group again without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_fails_only_its_models_jobs_in_a_group_commit() {
    let Some(cluster) = shared() else { return };
    commit_all(&postgres_store(&cluster, "group_lease").await).await;
    let minute = Duration::from_secs(60);
    let (a, a_leases) = node_store(&cluster, "group_lease", "a", minute).await;
    let (b, b_leases) = node_store(&cluster, "group_lease", "b", minute).await;
    let (doc, other) = (key("acme/notes", "doc"), key("acme/notes", "other"));
    // a believes both leases for a minute; the database keeps doc's for 300 ms only.
    let short = Duration::from_millis(300);
    assert!(matches!(acquire(&a, &a_leases, &doc, short).await, Acquired::Granted(_)));
    assert!(matches!(acquire(&a, &a_leases, &other, minute).await, Acquired::Granted(_)));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(acquire(&b, &b_leases, &doc, minute).await, Acquired::Granted(_)));
    let last = last_version(&a, &doc).await;

    // One group: other's job, doc's (lease lost), other's again, then a job of no model.
    let (sender, receiver) = tokio::sync::mpsc::channel(8);
    let mut outcomes = Vec::new();
    let other_lost = CancellationToken::new();
    let doc_lost = CancellationToken::new();
    let jobs = [
        (vec![commit_at("other", 1, 1)], other_lost.clone()),
        (vec![commit_at("doc", last + 1, 300)], doc_lost.clone()),
        (vec![commit_at("other", 2, 2)], other_lost.clone()),
        (
            vec![Write::PutUser {
                user: User { id: user("grouped"), display_name: None, anonymous: false },
            }],
            CancellationToken::new(),
        ),
    ];
    for (writes, lost) in jobs {
        let (done, wait) = tokio::sync::oneshot::channel();
        let domain = Arc::from("acme/notes");
        sender
            .send(Job { domain, writes, done: Some(done), lost, ..Job::default() })
            .await
            .unwrap();
        outcomes.push(wait);
    }
    drop(sender);
    let metrics = crate::metrics::Metrics::new();
    crate::store::write_loop(&a, receiver, CancellationToken::new(), Duration::ZERO, &metrics)
        .await;
    let outcomes: Vec<bool> = futures_util::future::join_all(outcomes)
        .await
        .into_iter()
        .map(|outcome| outcome.unwrap().is_ok())
        .collect();
    assert_eq!(outcomes, [true, false, true, true], "only doc's job fails");
    assert!(doc_lost.is_cancelled(), "doc's task is told to reload");
    assert!(!other_lost.is_cancelled());
    let stored = a.operations(&other, 0, u64::MAX, usize::MAX).await.unwrap();
    assert_eq!(stored.iter().map(|o| o.operation.version).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(last_version(&a, &doc).await, last, "nothing of doc's written");
    assert!(a.user("acme/notes", &user("grouped")).await.unwrap().is_some());
}

/// The ordering the fencing rests on: a grant to another node waits for a commit that
/// holds the lease (its first statement, `LEASE_CHECK`), even past the lease's expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_waits_for_the_commit_holding_the_lease() {
    let Some(cluster) = shared() else { return };
    let url = cluster.url("lease_order");
    let minute = Duration::from_secs(60);
    let (a, a_leases) = node_store(&cluster, "lease_order", "a", minute).await;
    let (b, b_leases) = node_store(&cluster, "lease_order", "b", minute).await;
    let doc = key("acme/notes", "doc");
    let Acquired::Granted(epoch) = acquire(&a, &a_leases, &doc, Duration::from_millis(300)).await
    else {
        panic!("a free lease is granted")
    };
    // A commit of a's, in progress: its lease check done, the rest still to come.
    let (mut raw, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let txn = raw.transaction().await.unwrap();
    let (domains, models, epochs) = (vec!["acme/notes"], vec!["doc"], vec![epoch as i64]);
    let locked =
        txn.query(LEASE_CHECK, &[&domains, &models, &epochs, &a_leases.node]).await.unwrap();
    assert_eq!(locked.len(), 1);
    // The lease expires meanwhile; b asks for it and must wait for a's commit.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let grant = tokio::spawn(async move {
        let acquired = b.acquire(b_leases.node, &doc, minute).await.unwrap();
        (acquired, std::time::Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!grant.is_finished(), "the grant did not wait for the commit holding the lease");
    let committed = std::time::Instant::now();
    txn.commit().await.unwrap();
    let (acquired, granted) = grant.await.unwrap();
    assert_eq!(acquired, Acquired::Granted(epoch + 1));
    assert!(granted >= committed);
}
