//! Replays every saved fuzz finding (`fuzz/crashers/<target>/*`) through its target's check,
//! so that a fixed finding stays fixed. `cargo xtask ci` runs this on stable.
//!
//! A finding whose fix has not landed yet is listed in [`OPEN`]: for it the test asserts
//! today's wrong behaviour (the check still fails), and fails once the check passes, so that
//! the entry is then removed and the input becomes an ordinary regression test.

use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use concord_fuzz::query::{PlanInput, check_online_offline, check_query_plan};
use concord_fuzz::server_store::{
    FileInput, LogInput, SealedInput, check_file, check_log, check_sealed,
};
use concord_fuzz::store::{RecordInput, StoreFileInput, check_record, check_store_file};
use concord_fuzz::{ApplyInput, Tp1Input, check_apply, check_tp1};

/// Findings not fixed yet, as `(target, file name)`.
const OPEN: &[(&str, &str)] = &[];

/// Decodes `bytes` the way `fuzz_target!` does and runs `check`; true when it passed.
fn passes<T: for<'a> Arbitrary<'a>>(bytes: &[u8], check: fn(&T)) -> bool {
    let Ok(input) = T::arbitrary_take_rest(Unstructured::new(bytes)) else {
        return true;
    };
    panic::catch_unwind(AssertUnwindSafe(|| check(&input))).is_ok()
}

fn replay(target: &str, check: fn(&[u8]) -> bool) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crashers").join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("a readable directory entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).expect("a readable crasher");
        let open = OPEN.contains(&(target, name.as_str()));
        match (check(&bytes), open) {
            (true, false) | (false, true) => {}
            (false, false) => panic!("{target}: {name} fails its check again"),
            (true, true) => {
                panic!("{target}: {name} passes now: remove it from OPEN in {}", file!())
            }
        }
    }
}

#[test]
fn ot_apply_crashers() {
    replay("ot_apply", |bytes| passes::<ApplyInput>(bytes, check_apply));
}

#[test]
fn ot_tp1_crashers() {
    replay("ot_tp1", |bytes| passes::<Tp1Input>(bytes, check_tp1));
}

#[test]
fn host_crashers() {
    replay("host", |bytes| {
        panic::catch_unwind(AssertUnwindSafe(|| concord_fuzz::host::check_host(bytes)))
            .is_ok_and(|checked| checked.is_ok())
    });
}

#[test]
fn query_text_crashers() {
    replay("query_text", |bytes| {
        let Ok(text) = std::str::from_utf8(bytes) else { return true };
        panic::catch_unwind(|| concord_fuzz::query::check_query_text(text)).is_ok()
    });
}

#[test]
fn query_plan_crashers() {
    replay("query_plan", |bytes| {
        passes::<PlanInput>(bytes, |input| {
            check_query_plan(input);
            let _ = check_online_offline(input);
        })
    });
}

#[test]
fn store_records_crashers() {
    replay("store_records", |bytes| passes::<RecordInput>(bytes, check_record));
}

#[test]
fn store_file_crashers() {
    replay("store_file", |bytes| {
        passes::<StoreFileInput>(bytes, |input| {
            let _ = check_store_file(input);
        })
    });
}

#[test]
fn server_store_records_crashers() {
    replay("server_store_records", |bytes| passes::<SealedInput>(bytes, check_sealed));
}

#[test]
fn server_store_file_crashers() {
    replay("server_store_file", |bytes| {
        passes::<FileInput>(bytes, |input| {
            let _ = check_file(input);
        })
    });
}

#[test]
fn server_store_log_crashers() {
    replay("server_store_log", |bytes| {
        passes::<LogInput>(bytes, |input| {
            let _ = check_log(input);
        })
    });
}
