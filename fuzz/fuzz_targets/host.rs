//! Fuzzes the server's sans-IO hosts with programs of client messages and store events.
//! The program and the invariants are in `concord_fuzz::host`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(broken) = concord_fuzz::host::check_host(data) {
        panic!("{broken}");
    }
});
