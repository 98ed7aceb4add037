//! Queries on the server's redb store (`docs/benchmarks.md`, "Queries"): 100,000 models of a
//! small JSON shape in one collection, indexed on `owner` and `priority`, answered by the
//! server's own executor (`host::query_reply` over the store, permissions checked per
//! model): an indexed equality (100 matches), an indexed range with ORDER BY and LIMIT 20
//! (10,000 in the range, counted, 20 loaded), and a full scan of a path that is not
//! indexed. The network is not measured. It also prints how long a backup of that store
//! takes and, with `CONCORD_BENCH_POSTGRES` set to the URL of an empty database, how long
//! `concord store copy` of it into that database takes.
//!
//! Besides criterion's means, each query's latency is printed as p50 / p99
//! (`queries latency …` lines).
//!
//! Run with `nice cargo bench -p concord-bench --bench queries`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use concord_ot::{Document, IdGenerator, ReplicaId, Value};
use concord_protocol::{
    CollectionId, ModelId, ModelSnapshot, RequestId, ServerMessage, ServerResponse, Timestamp,
    User, UserId,
};
use concord_query::{IndexKey, Path, Query};
use concord_server::benching::BenchStore;
use concord_sync::host::{HostConfig, ModelRecord, QueryLimits, QueryRead, Write};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

const MODELS: usize = 100_000;
const DOMAIN: &str = "bench/main";
/// Models written per transaction while filling the store.
const BATCH: usize = 5_000;

fn tasks() -> CollectionId {
    CollectionId::new("tasks").unwrap()
}

fn indexes() -> BTreeMap<CollectionId, Vec<Path>> {
    let paths = ["owner", "priority"].map(|p| Path::parse(p).unwrap());
    BTreeMap::from([(tasks(), paths.to_vec())])
}

/// The store, filled with `MODELS` tasks (values spread deterministically).
fn store(dir: &std::path::Path) -> BenchStore {
    let store = BenchStore::open(dir, &indexes()).expect("the store opens");
    let indexed = indexes().remove(&tasks()).unwrap();
    let cities = ["Oslo", "Bergen", "Lyon", "Porto", "Kyoto"];
    let mut writes = Vec::new();
    for i in 0..MODELS {
        let mut ids = IdGenerator::new(ReplicaId(1), 0);
        let data = json!({
            "title": format!("Task {i}"),
            "done": i % 3 == 0,
            "priority": (i * 7919) % 1000,
            "owner": format!("user{}", i % 1000),
            "city": cities[i % cities.len()],
        });
        let data = Document::new(Value::from_json(&data, &mut ids).unwrap()).unwrap();
        let model = ModelId::new(format!("m{i:06}")).unwrap();
        let keys = indexed.iter().map(|p| (p.clone(), IndexKey::of_document(p, &data))).collect();
        let record = ModelRecord {
            collection: tasks(),
            created_at: Timestamp(i as i64),
            nonce: None,
            creator: Some(UserId("writer".into())),
            grants: Default::default(),
        };
        let snapshot = ModelSnapshot {
            collection: tasks(),
            version: 0,
            created_at: Timestamp(i as i64),
            modified_at: Timestamp(i as i64),
            data,
        };
        writes.push(Write::CreateModel { model: model.clone(), record, snapshot });
        writes.push(Write::IndexModel { model, collection: tasks(), keys });
        if writes.len() >= 2 * BATCH {
            store.write(DOMAIN, std::mem::take(&mut writes)).expect("written");
        }
    }
    store.write(DOMAIN, writes).expect("written");
    store
}

const QUERIES: [(&str, &str); 4] = [
    ("indexed-equality", "SELECT * FROM tasks WHERE owner = 'user7'"),
    (
        "indexed-range-order-limit-20",
        "SELECT title, priority FROM tasks WHERE priority >= 900 ORDER BY priority DESC LIMIT 20",
    ),
    ("full-scan", "SELECT * FROM tasks WHERE title = 'nothing'"),
    // Ordered by a path with no index: every model is read and ranked.
    ("full-scan-ranked-limit-20", "SELECT * FROM tasks ORDER BY title LIMIT 20"),
];

fn answer(store: &BenchStore, read: &QueryRead, config: &HostConfig, limits: &QueryLimits) -> u64 {
    match store.query(DOMAIN, read, config, limits) {
        ServerMessage::Response { response: ServerResponse::QueryResult(page), .. } => page.total,
        other => panic!("{other:?}"),
    }
}

/// Copies the store file at `backup` (as the embedded store of a data directory of its own)
/// into the empty PostgreSQL database at `url`, and prints how long it took.
fn copy_into_postgres(backup: &std::path::Path, url: &str) {
    let data_dir = tempfile::tempdir().unwrap();
    std::fs::copy(backup, data_dir.path().join("concord.redb")).unwrap();
    let from = concord_server::StoreLocation {
        data_dir: data_dir.path().to_owned(),
        store: None,
        indexes: indexes(),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let copied = runtime.block_on(concord_server::copy_store(&from, &url.into(), |_| {})).unwrap();
    println!("queries: copied {copied} records into PostgreSQL in {:?}", started.elapsed());
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn queries(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let filled = Instant::now();
    let store = store(dir.path());
    println!("queries: {MODELS} models written in {:?}", filled.elapsed());
    // What a backup of this store costs (commits go on meanwhile, so it is not a pause).
    let backup = store.back_up(&dir.path().join("backups")).unwrap();
    println!("queries: backed up {} bytes in {:?}", backup.bytes, backup.took);
    if let Ok(url) = std::env::var("CONCORD_BENCH_POSTGRES") {
        copy_into_postgres(&backup.path, &url);
    }
    let config = HostConfig { indexes: indexes(), ..HostConfig::default() };
    let limits = QueryLimits { max_scanned: 2 * MODELS, ..QueryLimits::default() };
    let user = User { id: UserId("reader".into()), display_name: None, anonymous: false };
    let mut group = c.benchmark_group("queries-100k-redb");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for (name, text) in QUERIES {
        let read = QueryRead {
            request: RequestId(1),
            user: user.clone(),
            query: Query::parse(text).unwrap(),
        };
        let total = answer(&store, &read, &config, &limits);
        let runs = if name.starts_with("full-scan") { 10 } else { 200 };
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                black_box(answer(&store, &read, &config, &limits));
                start.elapsed()
            })
            .collect();
        times.sort_unstable();
        println!(
            "queries latency {name}: total {total}, p50 {:?}, p99 {:?} over {runs} runs",
            percentile(&times, 0.5),
            percentile(&times, 0.99)
        );
        group.bench_function(name, |b| {
            b.iter(|| black_box(answer(&store, &read, &config, &limits)))
        });
    }
    group.finish();
}

criterion_group!(benches, queries);
criterion_main!(benches);
