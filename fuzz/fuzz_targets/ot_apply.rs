//! Fuzzes `Document::apply`: no panic, all-or-nothing, serde_json round trip, exact inverses.
//! The checks are in `concord_fuzz::check_apply`.

#![no_main]

use concord_fuzz::{ApplyInput, check_apply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: ApplyInput| check_apply(&input));
