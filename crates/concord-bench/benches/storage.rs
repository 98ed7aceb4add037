//! Durable local writes on the redb store, with and without group commit (target P5 in
//! `docs/benchmarks.md`): batches per second when 1, 8, 64 or 256 batches share one commit (one fsync),
//! and operations per second when each batch holds several, as a fast typist's do.
//!
//! A batch is what one local edit costs the client: its pending operations (small string
//! splices, one per keystroke) and an element-counter advance on one model. Every commit is durable
//! (`Durability::Immediate`). The store file lives in the system's temporary directory, or
//! in `$CONCORD_BENCH_DIR`: put it on the disk you want to measure (not a tmpfs).

use std::cell::Cell;
use std::io::{Seek, SeekFrom, Write};

use concord_ot::{DiscreteOperation, ElementId, OperationKind};
use concord_protocol::{CollectionId, ModelId};
use concord_storage::{
    Batch, ModelRecord, Mutation, OfflineStore, PendingOperation, RedbStore, StoreKey,
};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

/// One local edit of `operations` keystrokes, the first with sequence number `first`.
fn local_edit(model: &ModelId, first: u64, operations: u64) -> Batch {
    let keystroke = |seq: u64| PendingOperation {
        seq,
        through: seq,
        operation: DiscreteOperation::new(
            ElementId::new(1, 1),
            OperationKind::StringSplice {
                index: (seq % 100) as usize,
                delete_count: 0,
                insert: "x".into(),
            },
        )
        .into(),
    };
    let last = first + operations - 1;
    Batch::new()
        .with(Mutation::AppendPending {
            model: model.clone(),
            operations: (first..=last).map(keystroke).collect(),
        })
        .with(Mutation::AdvanceElementCounter { model: model.clone(), next: last })
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
    // (bench id, batches per commit, operations per batch); throughput counts operations.
    let shapes = [
        ("redb_batches", 1u64, 1u64),
        ("redb_batches", 8, 1),
        ("redb_batches", 64, 1),
        ("redb_batches", 256, 1),
        ("redb_ops_8_per_batch", 64, 8),
        ("redb_ops_8_per_batch", 256, 8),
        ("redb_ops_32_per_batch", 256, 32),
    ];
    for (name, per_commit, per_batch) in shapes {
        group.throughput(Throughput::Elements(per_commit * per_batch));
        group.bench_with_input(
            BenchmarkId::new(name, per_commit),
            &per_commit,
            |b, &per_commit| {
                b.iter_batched(
                    || {
                        let first = next_seq.get();
                        next_seq.set(first + per_commit * per_batch);
                        (0..per_commit)
                            .map(|i| local_edit(&model, first + i * per_batch, per_batch))
                            .collect::<Vec<_>>()
                    },
                    |batches| pollster::block_on(store.commit_group(batches)).unwrap(),
                    BatchSize::SmallInput,
                );
            },
        );
    }
    // Beside them, in the same run: a bare flush of one rewritten 4 KiB page, the floor
    // under any durable commit on this disk.
    let mut file = tempfile::tempfile_in(dir.path()).expect("a file beside the store");
    let page = [0x5a_u8; 4096];
    group.throughput(Throughput::Elements(1));
    group.bench_function("bare_fdatasync", |b| {
        b.iter(|| {
            file.seek(SeekFrom::Start(0)).unwrap();
            file.write_all(&page).unwrap();
            file.sync_data().unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
