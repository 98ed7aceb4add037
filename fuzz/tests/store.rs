//! Runs the store record target's check on stable, without a fuzzer: every record type from
//! fixed pseudo-random bytes, from truncations of valid records, and from valid records
//! with one byte changed.

use concord_fuzz::store::{
    RecordInput, StoreFileInput, check_record, check_store_file, sample_file,
};
use concord_storage::fuzzing::{RecordKind, decode_record};

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
fn arbitrary_bytes_decode_to_a_typed_error_or_a_stable_record() {
    let mut seed = 0x5eed_u64;
    let mut decoded = 0;
    for kind in RecordKind::ALL {
        for len in 0..400 {
            let mut data = bytes(&mut seed, len % 40);
            if len % 2 == 0 {
                data.insert(0, 1);
            }
            decoded += usize::from(decode_record(kind, &data).is_ok());
            check_record(&RecordInput { kind, bytes: data });
        }
    }
    // Some inputs must decode, or the re-encoding check never runs.
    assert!(decoded > 100, "only {decoded} inputs decoded");
}

#[test]
fn damaged_records_decode_to_a_typed_error_or_a_stable_record() {
    // A user record, then every truncation and every single-byte change of it.
    let user = concord_protocol::User {
        id: concord_protocol::UserId("alice".into()),
        display_name: Some("Alice é".into()),
        anonymous: false,
    };
    let mut valid = vec![1];
    valid.extend(postcard_user(&user));
    assert!(decode_record(RecordKind::User, &valid).is_ok());
    for end in 0..valid.len() {
        check_record(&RecordInput { kind: RecordKind::User, bytes: valid[..end].to_vec() });
    }
    for at in 0..valid.len() {
        for byte in [0, 1, 0x7f, 0x80, 0xff] {
            let mut damaged = valid.clone();
            damaged[at] = byte;
            check_record(&RecordInput { kind: RecordKind::User, bytes: damaged });
        }
    }
}

/// The record as postcard lays it out: a string, an optional string, a bool.
fn postcard_user(user: &concord_protocol::User) -> Vec<u8> {
    let mut out = Vec::new();
    let string = |s: &str, out: &mut Vec<u8>| {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    };
    string(&user.id.0, &mut out);
    match &user.display_name {
        Some(name) => {
            out.push(1);
            string(name, &mut out);
        }
        None => out.push(0),
    }
    out.push(u8::from(user.anonymous));
    out
}

#[test]
fn the_sample_file_reads_whole() {
    let read = check_store_file(&StoreFileInput::DamagedSample(Vec::new()));
    assert_eq!(read.expect("the sample reads"), 2, "its two models");
}

#[test]
fn a_damaged_store_file_reads_or_fails_with_a_typed_error() {
    let (mut read, mut refused) = (0, 0);
    for at in (0..sample_file().len() as u32).step_by(211) {
        for byte in [0x00, 0xff] {
            match check_store_file(&StoreFileInput::DamagedSample(vec![(at, byte)])) {
                Ok(_) => read += 1,
                Err(_) => refused += 1,
            }
        }
    }
    let mut seed = 0xf11e_u64;
    for len in [1, 100, 4096, 70_000] {
        let input = StoreFileInput::Bytes(bytes(&mut seed, len));
        assert!(check_store_file(&input).is_err(), "{len} arbitrary bytes read as a store");
    }
    // Damage in the header and tables is noticed; damage in free pages is not there to be.
    assert!(read > 0 && refused > 0, "{read} read, {refused} refused");
}
