//! Fuzzes `transform` for TP1: two concurrent operations, each valid on the document, must
//! converge once transformed. The check is in `concord_fuzz::check_tp1`.

#![no_main]

use concord_fuzz::{Tp1Input, check_tp1};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: Tp1Input| check_tp1(&input));
