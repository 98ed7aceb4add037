//! The query evaluator (concord-query's reference executor, what the offline store runs) over
//! 10,000 small models of one shape: an equality filter, a range with ORDER BY and LIMIT 20,
//! and a condition that matches nothing (the whole collection examined, nothing kept).
//!
//! Run with `cargo bench -p concord-bench --bench query`; figures in `docs/benchmarks.md`.

use std::hint::black_box;
use std::time::Duration;

use concord_ot::{IdGenerator, ReplicaId, Value};
use concord_query::{Candidate, Query};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;

const MODELS: usize = 10_000;

/// Models of one shape with values spread deterministically (no randomness: repeatable runs).
fn models() -> Vec<(String, Value)> {
    let mut ids = IdGenerator::new(ReplicaId(1), 0);
    let cities = ["Oslo", "Bergen", "Lyon", "Porto", "Kyoto"];
    (0..MODELS)
        .map(|i| {
            let doc = json!({
                "title": format!("Task {i}"),
                "done": i % 3 == 0,
                "priority": (i * 7919) % 100,
                "owner": { "name": format!("user{}", i % 50), "city": cities[i % cities.len()] },
                "tags": ["a", "b"],
            });
            (format!("m{i:05}"), Value::from_json(&doc, &mut ids).expect("a valid model"))
        })
        .collect()
}

fn candidates(models: &[(String, Value)]) -> impl Iterator<Item = Candidate<'_>> {
    models.iter().enumerate().map(|(i, (id, data))| Candidate {
        id,
        version: i as u64,
        created: i as i64,
        modified: i as i64,
        data,
    })
}

fn evaluate(c: &mut Criterion) {
    let models = models();
    let mut group = c.benchmark_group("query-10k");
    group
        .throughput(Throughput::Elements(MODELS as u64))
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    let queries = [
        ("equality", "SELECT * FROM tasks WHERE owner.name = 'user7'"),
        (
            "range-order-limit",
            "SELECT title, priority FROM tasks WHERE priority >= 40 AND priority < 60 \
             ORDER BY priority DESC, title LIMIT 20",
        ),
        ("scan-no-match", "SELECT * FROM tasks WHERE owner.city = 'Nowhere' AND done = false"),
    ];
    for (name, text) in queries {
        let query = Query::parse(text).expect("a valid query");
        group.bench_function(name, |b| b.iter(|| black_box(query.evaluate(candidates(&models)))));
    }
    group.finish();
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
