//! Runs the seeded simulation outside the test harness and prints what it exercised:
//!
//! ```text
//! cargo run --release -p concord-testkit --example sim -- [--many] FIRST_SEED [COUNT]
//! ```
//!
//! `--many` is the many-clients scenario of `tests/simulation.rs`. A failing seed stops the
//! run and prints why; with `CONCORD_SIM_TRACE=1` also everything that happened.

use concord_testkit::sim::{Config, Stats, run};

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let many = args.first().is_some_and(|a| a == "--many");
    if many {
        args.remove(0);
    }
    let first: u64 = args.first().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let count: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let config = if many { Config::many_clients() } else { Config::default() };
    let mut total = Stats::default();
    for seed in first..first + count {
        total.add(&run(seed, config)?);
    }
    println!("{count} seeds from {first} passed: {total:?}");
    Ok(())
}
