//! Runs the host target's programs on stable, without a fuzzer: a few hundred programs from
//! fixed pseudo-random bytes, each checked step by step (`concord_fuzz::host`).

use concord_fuzz::host::{HostStats, check_host};

/// xorshift64: deterministic bytes without a dependency.
fn bytes(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

#[test]
fn seeded_programs_keep_the_hosts_invariants() {
    const RUNS: usize = 300;
    let mut seed = 0x5eed_u64;
    let (mut total, mut acked, mut crashed) = (HostStats::default(), 0, 0);
    for run in 0..RUNS {
        let data = bytes(&mut seed, 2048);
        let stats = match check_host(&data) {
            Ok(stats) => stats,
            Err(broken) => panic!("program {run} broke an invariant: {broken}"),
        };
        total.steps += stats.steps;
        total.replies += stats.replies;
        total.acks += stats.acks;
        total.crashes += stats.crashes;
        total.failed_reads += stats.failed_reads;
        acked += usize::from(stats.acks > 0);
        crashed += usize::from(stats.crashes > 0 && stats.acks > 0);
    }
    eprintln!("{acked} of {RUNS} programs had an ack, {crashed} crashed after one: {total:?}");
    // The programs must reach commits, and crashes after them, or they check little.
    assert!(acked >= RUNS / 3, "{acked} of {RUNS} programs had a submission acked: {total:?}");
    assert!(crashed >= RUNS / 10, "{crashed} of {RUNS} programs acked and crashed: {total:?}");
    assert!(total.replies >= total.steps / 4, "{total:?}");
    // Some requests met a store failing its reads, and were answered once all the same.
    assert!(total.failed_reads >= RUNS / 10, "{total:?}");
}
