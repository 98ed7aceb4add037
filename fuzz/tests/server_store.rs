//! Runs the server store targets' checks on stable, without a fuzzer: payloads of every
//! record type from fixed pseudo-random bytes, and the format fixture with bytes changed all
//! through it.

use concord_fuzz::server_store::{
    FIXTURE, FileInput, LogInput, PayloadInput, SealedInput, check_file, check_log, check_sealed,
    current_file,
};
use concord_server::StoreError;
use concord_server::fuzzing::{RecordKind, read_sealed};

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
fn arbitrary_payloads_read_as_a_stable_record_or_a_typed_error() {
    let mut seed = 0x5eed_u64;
    let mut decoded = 0;
    for kind in RecordKind::ALL {
        for len in 0..300 {
            let mut payload = bytes(&mut seed, len % 48);
            if len % 2 == 0 {
                // Small bytes: short lengths, early enum variants, valid bools and UTF-8.
                payload.iter_mut().for_each(|b| *b %= 4);
            }
            decoded += usize::from(read_sealed(kind, &payload).is_ok());
            check_sealed(&SealedInput { kind, payload });
        }
    }
    // Some payloads must decode, or the re-encoding check never runs.
    assert!(decoded > 100, "only {decoded} payloads decoded");
}

#[test]
fn the_fixture_reads_whole() {
    let models = check_file(&FileInput::DamagedFixture(Vec::new())).expect("the fixture reads");
    assert!(models > 0, "the fixture holds models");
}

#[test]
fn the_current_file_reads_whole() {
    let models = check_file(&FileInput::DamagedCurrent(Vec::new())).expect("the sample reads");
    assert_eq!(models, 2, "the sample holds two live models");
    eprintln!("the current-format sample is {} bytes", current_file().len());
}

#[test]
fn a_damaged_store_file_reads_or_fails_with_a_typed_error() {
    let (mut read, mut refused) = (0, 0);
    for at in (0..FIXTURE.len() as u32).step_by(233) {
        for byte in [0x00, 0xff] {
            match check_file(&FileInput::DamagedFixture(vec![(at, byte)])) {
                Ok(_) => read += 1,
                Err(_) => refused += 1,
            }
        }
    }
    for at in (0..current_file().len() as u32).step_by(1009) {
        for byte in [0x00, 0xff] {
            match check_file(&FileInput::DamagedCurrent(vec![(at, byte)])) {
                Ok(_) => read += 1,
                Err(_) => refused += 1,
            }
        }
    }
    let mut seed = 0xf11e_u64;
    for len in [0, 1, 100, 4096, 70_000] {
        assert!(check_file(&FileInput::Bytes(bytes(&mut seed, len))).is_err(), "{len} bytes");
    }
    // Damage in the header and tables is noticed; damage in free pages is not there to be.
    assert!(read > 0 && refused > 0, "{read} read, {refused} refused");
}

#[test]
fn the_sample_commit_logged_again_changes_nothing() {
    let input = LogInput(vec![PayloadInput::DamagedSample(Vec::new()); 2]);
    assert_eq!(check_log(&input).expect("the log applies"), 2, "the two live models");
}

#[test]
fn a_damaged_logged_commit_applies_or_fails_with_a_typed_error() {
    let len = concord_server::fuzzing::sample_log_payload().len() as u32;
    let (mut applied, mut refused) = (0, 0);
    for at in (0..len).step_by(7) {
        for byte in [0x00, 0x7f, 0xff] {
            let input = LogInput(vec![PayloadInput::DamagedSample(vec![(at, byte)])]);
            match check_log(&input) {
                Ok(_) => applied += 1,
                Err(StoreError::Corrupt(_) | StoreError::CorruptRecord { .. }) => refused += 1,
                Err(other) => panic!("byte {at} set to {byte:#x}: {other}"),
            }
        }
    }
    assert!(applied > 0 && refused > 0, "{applied} applied, {refused} refused");
}

/// Damaged files on which redb, trusting them, panicked while committing the store's opening
/// transaction and left its locks poisoned; closing the database panicked again — while the
/// first panic unwound, or with panics nested inside the close — or redb's own cleanup did,
/// which aborted the process (server start included). redb's integrity check at open now
/// refuses them as corrupt before anything writes.
#[test]
fn a_file_the_database_panicked_on_while_opening_is_refused_at_open() {
    use arbitrary::{Arbitrary, Unstructured};
    let saved: [&[u8]; 4] = [
        include_bytes!("../crashers/server_store_file/damaged-file-abort"),
        include_bytes!("../crashers/server_store_file/damaged-file-abort-2"),
        include_bytes!("../crashers/server_store_file/damaged-free-list-abort"),
        include_bytes!("../crashers/server_store_file/damaged-free-list-abort-2"),
    ];
    for bytes in saved {
        let input = FileInput::arbitrary_take_rest(Unstructured::new(bytes)).unwrap();
        match check_file(&input) {
            Err(StoreError::Corrupt(why)) => assert!(why.contains("integrity check"), "{why}"),
            other => panic!("expected a corrupt store, got {other:?}"),
        }
    }
}
