//! Replays the sequential editing traces through concord-ot and peer engines, and measures
//! splice × splice transformation.
//!
//! Run with `cargo bench -p concord-bench --bench ot`; results and their reading are in
//! `docs/benchmarks.md`. Every engine starts from an empty (or start-content) structure built
//! outside the timed region, and the inputs (operations, patches) are built once per trace.

use std::hint::black_box;
use std::time::Duration;

use concord_bench::{
    SEQUENTIAL, TEXT_ID, Trace, load_sequential, ot_document, splice_ops, splice_pairs,
};
use concord_ot::transform_discrete;
use criterion::{
    BatchSize, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group,
    criterion_main, measurement::WallTime,
};
use diamond_types::list::ListCRDT;
use jumprope::JumpRope;
use ropey::Rope;

/// Seed for every jumprope built here: fixed layouts, repeatable runs.
const ROPE_SEED: u64 = 0x5eed;

fn replay(c: &mut Criterion) {
    let mut group = c.benchmark_group("replay");
    // One replay takes milliseconds to tens of milliseconds: flat sampling keeps the run short.
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(30)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6));
    for name in SEQUENTIAL {
        let trace = load_sequential(name).unwrap_or_else(|e| panic!("{e:#}"));
        replay_trace(&mut group, &trace);
    }
    group.finish();
}

fn replay_trace(group: &mut BenchmarkGroup<'_, WallTime>, trace: &Trace) {
    let name = trace.name.as_str();
    let end_chars = trace.end_content.chars().count();
    group.throughput(Throughput::Elements(trace.patches.len() as u64));

    let ops = splice_ops(trace, TEXT_ID);
    group.bench_function(BenchmarkId::new("concord-ot", name), |b| {
        b.iter_batched(
            || ot_document(&trace.start_content),
            |mut doc| {
                for op in &ops {
                    black_box(doc.apply_discrete(op).expect("trace patches apply"));
                }
                doc
            },
            BatchSize::PerIteration,
        );
    });
    // What a replica's confirmed copy and a replay do: the same edits, no old values kept.
    group.bench_function(BenchmarkId::new("concord-ot-without-old", name), |b| {
        b.iter_batched(
            || ot_document(&trace.start_content),
            |mut doc| {
                for op in &ops {
                    doc.apply_discrete_without_old(op).expect("trace patches apply");
                }
                doc
            },
            BatchSize::PerIteration,
        );
    });
    let mut doc = ot_document(&trace.start_content);
    ops.iter().for_each(|op| {
        doc.apply_discrete(op).unwrap();
    });
    assert_eq!(doc.text_len(TEXT_ID), Some(end_chars), "concord-ot on {name}");
    let mut forgetting = ot_document(&trace.start_content);
    ops.iter().for_each(|op| forgetting.apply_discrete_without_old(op).unwrap());
    assert_eq!(forgetting, doc, "concord-ot without old values on {name}");
    drop(ops);

    group.bench_function(BenchmarkId::new("jumprope", name), |b| {
        b.iter_batched(
            || {
                let mut rope = JumpRope::new_from_seed(ROPE_SEED);
                rope.insert(0, &trace.start_content);
                rope
            },
            |mut rope| {
                for p in &trace.patches {
                    if p.del > 0 {
                        rope.remove(p.pos..p.pos + p.del);
                    }
                    if !p.insert.is_empty() {
                        rope.insert(p.pos, &p.insert);
                    }
                }
                rope
            },
            BatchSize::PerIteration,
        );
    });

    // diamond-types is a CRDT: one local author makes every edit, as in its own benchmarks.
    assert!(trace.start_content.is_empty(), "diamond-types replay starts empty");
    group.bench_function(BenchmarkId::new("diamond-types", name), |b| {
        b.iter_batched(
            || {
                let mut doc = ListCRDT::new();
                let author = doc.get_or_create_agent_id("bench");
                (doc, author)
            },
            |(mut doc, author)| {
                for p in &trace.patches {
                    if p.del > 0 {
                        doc.delete_without_content(author, p.pos..p.pos + p.del);
                    }
                    if !p.insert.is_empty() {
                        doc.insert(author, p.pos, &p.insert);
                    }
                }
                doc
            },
            BatchSize::PerIteration,
        );
    });
    let mut doc = ListCRDT::new();
    let author = doc.get_or_create_agent_id("bench");
    for p in &trace.patches {
        if p.del > 0 {
            doc.delete_without_content(author, p.pos..p.pos + p.del);
        }
        if !p.insert.is_empty() {
            doc.insert(author, p.pos, &p.insert);
        }
    }
    assert_eq!(doc.len(), end_chars, "diamond-types on {name}");

    group.bench_function(BenchmarkId::new("ropey", name), |b| {
        b.iter_batched(
            || Rope::from_str(&trace.start_content),
            |mut rope| {
                for p in &trace.patches {
                    if p.del > 0 {
                        rope.remove(p.pos..p.pos + p.del);
                    }
                    if !p.insert.is_empty() {
                        rope.insert(p.pos, &p.insert);
                    }
                }
                rope
            },
            BatchSize::PerIteration,
        );
    });
}

/// Number of splice pairs per transform iteration.
const PAIRS: usize = 10_000;

fn transform(c: &mut Criterion) {
    let mut group = c.benchmark_group("transform");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(PAIRS as u64));
    let pairs = splice_pairs(0xC0FFEE, PAIRS, 1_000, TEXT_ID);
    group.bench_function(BenchmarkId::new("splice-splice", PAIRS), |b| {
        b.iter_batched(
            || pairs.clone(),
            // Collecting in place reuses the input's allocation, so the outputs are dropped
            // outside the timed region, like the inputs are cloned outside it.
            |pairs| pairs.into_iter().map(|(s, c)| transform_discrete(s, c)).collect::<Vec<_>>(),
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, replay, transform);
criterion_main!(benches);
