//! Fuzzes the client store's record decoding with arbitrary bytes: a typed corruption error
//! or a stable value, never a panic. The checks are in `concord_fuzz::store::check_record`.

#![no_main]

use concord_fuzz::store::{RecordInput, check_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: RecordInput| check_record(&input));
