//! Runs the seeded simulation outside the test harness and prints what it exercised:
//!
//! ```text
//! cargo run --release -p concord-testkit --example sim -- [--many | --limit] FIRST_SEED [COUNT]
//! ```
//!
//! `--many` is the many-clients scenario of `tests/simulation.rs`, `--limit` the one with
//! more models than the server lets a connection open. A failing seed stops the
//! run and prints why; with `CONCORD_SIM_TRACE=1` also everything that happened.

use concord_testkit::sim::{Config, Stats, run};

fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let scenario = args.first().filter(|a| a.starts_with("--")).cloned();
    if scenario.is_some() {
        args.remove(0);
    }
    let first: u64 = args.first().map(|s| s.parse()).transpose()?.unwrap_or(0);
    let count: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let config = match scenario.as_deref() {
        None => Config::default(),
        Some("--many") => Config::many_clients(),
        Some("--limit") => Config::open_limit(),
        Some(other) => anyhow::bail!("unknown scenario {other}"),
    };
    let mut total = Stats::default();
    for seed in first..first + count {
        total.add(&run(seed, config)?);
    }
    println!("{count} seeds from {first} passed: {total:?}");
    Ok(())
}
