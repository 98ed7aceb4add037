//! Guards the generators' usefulness on stable, without a fuzzer: from plain pseudo-random
//! bytes, a fair share of TP1 inputs must be pairs that both apply and that transform
//! actually changes; otherwise the fuzzer would spend its time on skipped inputs.

use arbitrary::{Arbitrary, Unstructured};
use concord_fuzz::{Tp1Input, check_tp1};
use concord_ot::transform;

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
fn tp1_inputs_are_mostly_meaningful() {
    const RUNS: usize = 3000;
    let mut seed = 0x5eed_u64;
    let (mut both_apply, mut transformed) = (0, 0);
    for _ in 0..RUNS {
        let data = bytes(&mut seed, 256);
        let Ok(input) = Tp1Input::arbitrary(&mut Unstructured::new(&data)) else {
            continue;
        };
        let (mut left, mut right) = (input.doc.clone(), input.doc.clone());
        if left.apply(&input.a).is_err() || right.apply(&input.b).is_err() {
            continue;
        }
        both_apply += 1;
        let (a2, b2) = transform(input.a.clone(), input.b.clone());
        if a2 != input.a || b2 != input.b {
            transformed += 1;
        }
        check_tp1(&input);
    }
    assert!(both_apply * 4 > RUNS, "only {both_apply} of {RUNS} pairs both apply");
    assert!(transformed * 20 > RUNS, "only {transformed} of {RUNS} pairs interact");
}
