//! Opening a model's history at random versions, and playing it forwards and backwards
//! (`docs/benchmarks.md`, "History").
//!
//! A history is the first N patches of the automerge-paper trace, one committed operation
//! each (a string splice on `{ "text": … }`), stored as the server stores it: written
//! through the hosts' `Write`s into `concord_testkit`'s in-memory server store (the model as
//! created, every operation with its user, a checkpoint every 1,000 operations, as the
//! server's default `snapshot_every`). Pages are answered by the server's own
//! `host::history_reply` and taken by the client's `HistoryCursor`, 256 operations a page,
//! as `HistoricalModel` asks. Network and disk are not measured; the server's store reads
//! are a range scan of the same shape.
//!
//! Besides criterion's means, each size's open latency is printed as p50 / p99 over 2,000
//! random versions, and over 2,000 random versions among the first 1,000 — where the model
//! is the same size whatever the history's length (`history_open latency …` lines).

use std::time::{Duration, Instant};

use concord_bench::{Lcg, TEXT_ID, load_sequential, ot_document, splice_ops};
use concord_ot::{Document, Operation};
use concord_protocol::{
    CollectionId, CommittedOperation, HistoryInfo, ModelId, ModelSnapshot, RequestId,
    ServerMessage, ServerResponse, SessionId, Timestamp, UserId,
};
use concord_sync::CommitRecord;
use concord_sync::history::HistoryCursor;
use concord_sync::host::{HistoryQuery, HistoryRead, ModelRecord, Write};
use concord_testkit::server_store::MemoryServerStore;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const CHECKPOINT_EVERY: u64 = 1_000;
const PAGE: u32 = 256;
const SIZES: [u64; 3] = [1_000, 10_000, 100_000];

struct History {
    store: MemoryServerStore,
    model: ModelId,
    length: u64,
}

fn collection() -> CollectionId {
    CollectionId::new("bench").unwrap()
}

fn snapshot(document: &Document, version: u64) -> ModelSnapshot {
    ModelSnapshot {
        collection: collection(),
        version,
        created_at: Timestamp(0),
        modified_at: Timestamp(version as i64),
        data: document.clone(),
    }
}

/// The first `length` patches of automerge-paper as a stored history.
fn history(length: u64) -> History {
    let trace = load_sequential("automerge-paper").expect("the automerge-paper trace");
    let ops = splice_ops(&trace, TEXT_ID);
    assert!(ops.len() as u64 >= length, "the trace has {} patches", ops.len());
    let model = ModelId::new("bench").unwrap();
    let mut store = MemoryServerStore::new();
    let mut document = ot_document(&trace.start_content);
    let record = ModelRecord {
        collection: collection(),
        created_at: Timestamp(0),
        nonce: None,
        creator: None,
        grants: Default::default(),
    };
    let replica = concord_ot::ReplicaId(7);
    store.apply(&Write::BindReplica { replica, user: UserId("writer".into()) });
    store.apply(&Write::CreateModel {
        model: model.clone(),
        record,
        snapshot: snapshot(&document, 0),
    });
    for (i, op) in ops.iter().take(length as usize).enumerate() {
        let version = i as u64 + 1;
        let operation: Operation = op.clone().into();
        document.apply(&operation).expect("the trace applies");
        let committed = CommittedOperation {
            version,
            author: SessionId("writer".into()),
            timestamp: Timestamp(version as i64),
            operation,
        };
        let record =
            CommitRecord { model: model.clone(), operation: committed, replica, seq: version };
        store.apply(&Write::Commit(record));
        if version.is_multiple_of(CHECKPOINT_EVERY) {
            store.apply(&Write::Snapshot {
                model: model.clone(),
                snapshot: snapshot(&document, version),
            });
        }
    }
    History { store, model, length }
}

impl History {
    fn read(&self, query: HistoryQuery) -> HistoryRead {
        HistoryRead {
            request: RequestId(1),
            model: self.model.clone(),
            collection: collection(),
            created_at: Timestamp(0),
            through: self.length,
            modified_at: Timestamp(self.length as i64),
            checkpoint_every: CHECKPOINT_EVERY,
            query,
        }
    }

    fn info(&self) -> HistoryInfo {
        match self.store.history(&self.read(HistoryQuery::Open)) {
            ServerMessage::Response { response: ServerResponse::HistoryOpened(info), .. } => info,
            other => panic!("not opened: {other:?}"),
        }
    }

    /// Moves `cursor` to `version`, fetching pages as `HistoricalModel` does.
    fn play_to(&self, cursor: &mut HistoryCursor, version: u64) {
        while let Some(fetch) = cursor.seek(version).expect("in range") {
            let query = HistoryQuery::Fetch {
                start: fetch.start,
                checkpoint: fetch.checkpoint,
                max_operations: PAGE,
                max_bytes: 1024 * 1024,
            };
            match self.store.history(&self.read(query)) {
                ServerMessage::Response { response: ServerResponse::HistoryPage(page), .. } => {
                    cursor.take_page(page).expect("a page that fits")
                }
                other => panic!("no page: {other:?}"),
            }
        }
    }

    /// A new historical model opened at `version`.
    fn open_at(&self, info: &HistoryInfo, version: u64) -> HistoryCursor {
        let mut cursor = HistoryCursor::new(info.clone(), PAGE as usize);
        self.play_to(&mut cursor, version);
        cursor
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The open latency distributions, outside criterion, printed: at any version, and within
/// the first 1,000 versions (the same model sizes whatever the history's length, so that only
/// the length differs). The sizes take turns, one open each, so that the load of a shared
/// machine falls on all of them alike.
fn print_open_latencies(histories: &[(History, HistoryInfo)]) {
    const OPENS: usize = 2_000;
    for (range, first_only) in [("any version", false), ("versions 0..=1000", true)] {
        let mut rng = Lcg::new(7);
        let mut latencies = vec![Vec::with_capacity(OPENS); histories.len()];
        for _ in 0..OPENS {
            for (i, (history, info)) in histories.iter().enumerate() {
                let below = if first_only { 1_001 } else { history.length + 1 };
                let version = rng.below(below as usize) as u64;
                let started = Instant::now();
                let cursor = history.open_at(info, version);
                latencies[i].push(started.elapsed());
                assert_eq!(cursor.version(), version);
            }
        }
        for ((history, _), mut latencies) in histories.iter().zip(latencies) {
            latencies.sort();
            println!(
                "history_open latency, {} operations, {range}: p50 {:?}, p99 {:?}, max {:?}",
                history.length,
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99),
                latencies.last().unwrap()
            );
        }
    }
}

fn open_at_random_versions(c: &mut Criterion) {
    let histories: Vec<(History, HistoryInfo)> = SIZES
        .into_iter()
        .map(|length| {
            let history = history(length);
            let info = history.info();
            (history, info)
        })
        .collect();
    print_open_latencies(&histories);
    let mut group = c.benchmark_group("history_open");
    group.sample_size(30);
    for (history, info) in &histories {
        let mut rng = Lcg::new(history.length);
        group.bench_function(BenchmarkId::from_parameter(history.length), |b| {
            b.iter(|| {
                let version = rng.below(history.length as usize + 1) as u64;
                history.open_at(info, version)
            })
        });
    }
    group.finish();
}

fn play_10k(c: &mut Criterion) {
    const STEPS: u64 = 10_000;
    let history = history(100_000);
    let info = history.info();
    let start = 40_000;
    let mut group = c.benchmark_group("history_play");
    group.sample_size(10);
    group.throughput(Throughput::Elements(STEPS));
    group.bench_function("forward_10k_steps", |b| {
        b.iter_batched(
            || history.open_at(&info, start),
            |mut cursor| {
                for version in start + 1..=start + STEPS {
                    history.play_to(&mut cursor, version);
                }
                cursor
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.bench_function("backward_10k_steps", |b| {
        b.iter_batched(
            || history.open_at(&info, start + STEPS),
            |mut cursor| {
                for version in (start..start + STEPS).rev() {
                    history.play_to(&mut cursor, version);
                }
                cursor
            },
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, open_at_random_versions, play_10k);
criterion_main!(benches);
