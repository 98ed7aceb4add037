//! Fuzzes the server store's log: commits logged beside a valid store file, their contents
//! damaged under checksums that hold, are applied when the store opens, or refused with a
//! typed error; never a hang, a crash or a panic past the store's guard
//! (`concord_fuzz::server_store::check_log`).

#![no_main]

use concord_fuzz::server_store::{LogInput, check_log};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    // As in `server_store_file`: the store reports a panic inside the database as damage.
    init: std::panic::set_hook(Box::new(|_| {})),
    |input: LogInput| {
        let _ = check_log(&input);
    }
);
