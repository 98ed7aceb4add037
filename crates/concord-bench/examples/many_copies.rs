//! The load clients' share of P2 in one process: many copies of one long text, every
//! operation applied to each copy at the same random place, as each of `concord-load`'s
//! clients applies every operation of the run to its own copy of the body.
//!
//! `cargo run --release -p concord-bench --example many_copies -- [copies] [chars] [ops]`
//! (default 50 copies of 100,000 chars, 20,000 operations). Prints the nanoseconds per
//! operation applied to one copy. With many copies the texts do not fit the caches, so this
//! measures how a text's store behaves when nearly every search misses them, which the
//! editing traces (one copy, nearby edits) do not.

use std::time::Instant;

use anyhow::{Result, ensure};
use concord_bench::{Lcg, TEXT_ID, ot_document};
use concord_ot::{DiscreteOperation, OperationKind};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let copies = args.next().unwrap_or(Ok(50))?;
    let chars = args.next().unwrap_or(Ok(100_000))?;
    let ops = args.next().unwrap_or(Ok(20_000))?;
    let body = "lorem ipsum dolor sit amet ".repeat(chars / 27 + 1)[..chars].to_owned();
    let mut docs: Vec<_> = (0..copies).map(|_| ot_document(&body)).collect();
    let mut rng = Lcg::new(0x5eed);
    let start = Instant::now();
    for i in 0..ops {
        let index = rng.below(chars + i + 1);
        let op = DiscreteOperation::new(
            TEXT_ID,
            OperationKind::StringSplice { index, delete_count: 0, insert: "x".into() },
        );
        for doc in &mut docs {
            doc.apply_discrete_without_old(&op)?;
        }
    }
    let elapsed = start.elapsed();
    for doc in &docs {
        ensure!(doc.text_len(TEXT_ID) == Some(chars + ops), "a copy lost an insert");
    }
    println!(
        "{copies} copies of {chars} chars, {ops} operations: {:.0} ns per operation per copy",
        elapsed.as_nanos() as f64 / (ops * copies) as f64
    );
    Ok(())
}
