//! Fuzzes the server store with damaged store files: opened and read whole, they give what
//! they hold or a typed error, never a hang, a crash or a panic past the store's guard
//! (`concord_fuzz::server_store`).

#![no_main]

use concord_fuzz::server_store::{FileInput, check_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    // The store catches panics inside the database and reports them as damage (as the
    // server does); libFuzzer's hook would abort at the first one, caught or not. A panic
    // that escapes the guard still aborts: the harness treats every uncaught panic so.
    init: std::panic::set_hook(Box::new(|_| {})),
    |input: FileInput| {
        let _ = check_file(&input);
    }
);
