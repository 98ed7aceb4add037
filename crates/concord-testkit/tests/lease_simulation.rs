//! Seeded scenarios of several server nodes over one store with leases: pauses past the
//! lease, crashes with appends still on their way, graceful handovers and long message
//! delays, checking one writer per model version, nothing acknowledged lost and nothing
//! stored twice (`concord_testkit::lease_sim`). `CONCORD_SEEDS=N` runs N seeds, from
//! `CONCORD_FIRST_SEED` (0 unless set; `cargo xtask soak` sweeps 10,000).

use concord_testkit::lease_sim::{LeaseSimConfig, LeaseStats, run};
use concord_testkit::sim::seeds;

#[test]
fn one_writer_per_version_and_nothing_lost_through_pauses_crashes_and_takeovers() {
    let config = LeaseSimConfig::default();
    let mut total = LeaseStats::default();
    let seeds = seeds(300);
    let count = seeds.end - seeds.start;
    for seed in seeds {
        match run(seed, config) {
            Ok(stats) => total.add(&stats),
            Err(failure) => {
                panic!("{failure}\nreplay: concord_testkit::lease_sim::run({seed}, {config:?})")
            }
        }
    }
    eprintln!("{count} seeds: {total:?}");
    // The scenarios exercised what they claim to.
    let per_seed = |n: usize| n as u64 * count / 300;
    assert!(total.appends as u64 >= per_seed(300 * 60), "{total:?}");
    assert!(
        total.takeovers as u64 > per_seed(300) && total.handovers as u64 > per_seed(100),
        "{total:?}"
    );
    assert!(
        total.fenced as u64 > per_seed(50) && total.expired as u64 > per_seed(300),
        "{total:?}"
    );
    assert!(
        total.pauses as u64 > per_seed(300) && total.crashes as u64 > per_seed(100),
        "{total:?}"
    );
    assert!(total.duplicates > 0, "{total:?}");
}
