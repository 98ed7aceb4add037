//! Replays one sequential trace through one engine, outside criterion: for profilers and
//! instruction counters (`valgrind --tool=callgrind`), which want a small, plain process.
//!
//! `cargo run --release -p concord-bench --example replay -- <engine> <trace> [runs]`, where
//! engine is `concord-ot`, `concord-ot-without-old` (keeping no deleted text), `jumprope`, `diamond-types`, `ropey` or `none` (load only). Prints
//! the median wall time of `runs` replays (default 1). The replay itself is in a function
//! named `replay_<engine>` that is never inlined, so that callgrind can count just it with
//! `--toggle-collect='*replay_<engine>*'`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use concord_bench::{Trace, load_sequential, ot_document, splice_ops};
use concord_ot::{DiscreteOperation, Document};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (engine, name) = match args.as_slice() {
        [engine, name, ..] => (engine.as_str(), name.as_str()),
        _ => bail!(
            "usage: replay <concord-ot|concord-ot-without-old|jumprope|diamond-types|ropey|none> <trace> [runs]"
        ),
    };
    let runs: usize = args.get(2).map_or(Ok(1), |r| r.parse())?;
    let trace = load_sequential(name)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        times.push(run(engine, &trace)?);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "{engine} {name}: median {:.3} ms over {runs} run(s), {} patches",
        median.as_secs_f64() * 1e3,
        trace.patches.len()
    );
    Ok(())
}

fn run(engine: &str, trace: &Trace) -> Result<Duration> {
    let end_chars = trace.end_content.chars().count();
    let (elapsed, len) = match engine {
        "concord-ot" => {
            let ops = splice_ops(trace, concord_bench::TEXT_ID);
            let mut doc = ot_document(&trace.start_content);
            let start = Instant::now();
            replay_concord_ot(&mut doc, &ops);
            let elapsed = start.elapsed();
            (elapsed, doc.text_len(concord_bench::TEXT_ID).unwrap_or(0))
        }
        "concord-ot-without-old" => {
            let ops = splice_ops(trace, concord_bench::TEXT_ID);
            let mut doc = ot_document(&trace.start_content);
            let start = Instant::now();
            replay_concord_ot_without_old(&mut doc, &ops);
            let elapsed = start.elapsed();
            (elapsed, doc.text_len(concord_bench::TEXT_ID).unwrap_or(0))
        }
        "jumprope" => {
            let mut rope = jumprope::JumpRope::new_from_seed(0x5eed);
            rope.insert(0, &trace.start_content);
            let start = Instant::now();
            replay_jumprope(&mut rope, trace);
            (start.elapsed(), rope.len_chars())
        }
        "diamond-types" => {
            let mut doc = diamond_types::list::ListCRDT::new();
            let start = Instant::now();
            replay_diamond_types(&mut doc, trace);
            (start.elapsed(), doc.len())
        }
        "ropey" => {
            let mut rope = ropey::Rope::from_str(&trace.start_content);
            let start = Instant::now();
            replay_ropey(&mut rope, trace);
            (start.elapsed(), rope.len_chars())
        }
        "none" => (Duration::ZERO, end_chars),
        other => bail!("unknown engine {other}"),
    };
    if len != end_chars {
        bail!("{engine} ended with {len} chars, expected {end_chars}");
    }
    Ok(elapsed)
}

#[inline(never)]
fn replay_concord_ot(doc: &mut Document, ops: &[DiscreteOperation]) {
    for op in ops {
        black_box(doc.apply_discrete(op).expect("trace patches apply"));
    }
}

#[inline(never)]
fn replay_concord_ot_without_old(doc: &mut Document, ops: &[DiscreteOperation]) {
    for op in ops {
        doc.apply_discrete_without_old(op).expect("trace patches apply");
    }
}

#[inline(never)]
fn replay_jumprope(rope: &mut jumprope::JumpRope, trace: &Trace) {
    for p in &trace.patches {
        if p.del > 0 {
            rope.remove(p.pos..p.pos + p.del);
        }
        if !p.insert.is_empty() {
            rope.insert(p.pos, &p.insert);
        }
    }
}

#[inline(never)]
fn replay_diamond_types(doc: &mut diamond_types::list::ListCRDT, trace: &Trace) {
    let author = doc.get_or_create_agent_id("bench");
    for p in &trace.patches {
        if p.del > 0 {
            doc.delete_without_content(author, p.pos..p.pos + p.del);
        }
        if !p.insert.is_empty() {
            doc.insert(author, p.pos, &p.insert);
        }
    }
}

#[inline(never)]
fn replay_ropey(rope: &mut ropey::Rope, trace: &Trace) {
    for p in &trace.patches {
        if p.del > 0 {
            rope.remove(p.pos..p.pos + p.del);
        }
        if !p.insert.is_empty() {
            rope.insert(p.pos, &p.insert);
        }
    }
}
