//! Fuzzes the client's redb store with damaged store files: opened, read whole and given a
//! change, they give what they hold or a typed error, never a hang, a crash or a panic
//! (`concord_fuzz::store`).

#![no_main]

use concord_fuzz::store::{StoreFileInput, check_store_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    // The store catches panics inside the database and reports them as damage; libFuzzer's
    // hook would abort at the first one, caught or not. A panic that escapes the guard still
    // aborts: the harness treats every uncaught panic so.
    init: std::panic::set_hook(Box::new(|_| {})),
    |input: StoreFileInput| {
        let _ = check_store_file(&input);
    }
);
