//! Durable local writes on the redb store, with and without group commit (target P5 in
//! `docs/benchmarks.md`): batches per second when 1, 8, 64 or 256 batches share one commit (one fsync).
//!
//! A batch is what one local edit costs the client: one pending operation (a small string
//! splice) and an element-counter advance on one model. Every commit is durable
//! (`Durability::Immediate`). The store file lives in the system's temporary directory, or
//! in `$CONCORD_BENCH_DIR`: put it on the disk you want to measure (not a tmpfs).

use std::cell::Cell;

use concord_ot::{DiscreteOperation, ElementId, OperationKind};
use concord_protocol::{CollectionId, ModelId};
use concord_storage::{
    Batch, ModelRecord, Mutation, OfflineStore, PendingOperation, RedbStore, StoreKey,
};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn local_edit(model: &ModelId, seq: u64) -> Batch {
    let kind = OperationKind::StringSplice {
        index: (seq % 100) as usize,
        delete_count: 0,
        insert: "x".into(),
    };
    Batch::new()
        .with(Mutation::AppendPending {
            model: model.clone(),
            operations: vec![PendingOperation {
                seq,
                through: seq,
                operation: DiscreteOperation::new(ElementId::new(1, 1), kind).into(),
            }],
        })
        .with(Mutation::AdvanceElementCounter { model: model.clone(), next: seq })
}

fn group_commit(c: &mut Criterion) {
    let dir = match std::env::var_os("CONCORD_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir),
        None => tempfile::tempdir(),
    }
    .expect("a temporary directory");
    let store = RedbStore::open(dir.path().join("bench.redb"), &StoreKey::new("bench", "bench"))
        .expect("open the store");
    let model = ModelId::new("bench-model").unwrap();
    let record = ModelRecord::new(model.clone(), CollectionId::new("bench").unwrap());
    pollster::block_on(store.commit(Batch::new().with(Mutation::PutModel(record)))).unwrap();
    let next_seq = Cell::new(1u64);

    let mut group = c.benchmark_group("storage_group_commit");
    group.sample_size(20);
    for per_commit in [1u64, 8, 64, 256] {
        group.throughput(Throughput::Elements(per_commit));
        group.bench_with_input(
            BenchmarkId::new("redb_batches", per_commit),
            &per_commit,
            |b, &per_commit| {
                b.iter_batched(
                    || {
                        let first = next_seq.get();
                        next_seq.set(first + per_commit);
                        (first..first + per_commit)
                            .map(|seq| local_edit(&model, seq))
                            .collect::<Vec<_>>()
                    },
                    |batches| pollster::block_on(store.commit_group(batches)).unwrap(),
                    BatchSize::SmallInput,
                );
            },
        );
    }
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
