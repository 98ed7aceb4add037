//! Fuzzes the server store's record decoding with payloads sealed under a valid checksum:
//! a stable value or a typed error, never a panic (`concord_fuzz::server_store`).

#![no_main]

use concord_fuzz::server_store::{SealedInput, check_sealed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: SealedInput| check_sealed(&input));
