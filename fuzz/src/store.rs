//! Fuzzing of what the client's store reads back from disk: arbitrary bytes decoded as each
//! record type, key layout and format version its tables hold
//! (`concord_storage::fuzzing::decode_record`), and whole redb store files. Decoding never
//! panics; it fails with a typed corruption error ([`StorageError::Codec`] or
//! [`StorageError::Corrupt`]), or gives a record whose encoding decodes to the same record
//! again (no value that reads one way and writes another). A damaged file opens, reads
//! whole and takes a change, or fails with a typed [`StorageError`].

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Result, Unstructured};
use concord_storage::StorageError;
use concord_storage::fuzzing::file::{read_store_file, sample_store_file};
use concord_storage::fuzzing::{RecordKind, decode_record};

/// Bytes, and the record type to read them as.
#[derive(Debug)]
pub struct RecordInput {
    pub kind: RecordKind,
    pub bytes: Vec<u8>,
}

impl<'a> Arbitrary<'a> for RecordInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<RecordInput> {
        let kind = *u.choose(&RecordKind::ALL)?;
        let mut bytes = Vec::new();
        // Mostly with the record envelope's first byte, so that decoding gets past it.
        if u.ratio(7, 8)? {
            bytes.push(1);
        }
        let rest = u.len();
        bytes.extend_from_slice(u.bytes(rest)?);
        Ok(RecordInput { kind, bytes })
    }
}

pub fn check_record(input: &RecordInput) {
    let encoded = match decode_record(input.kind, &input.bytes) {
        Ok(encoded) => encoded,
        Err(StorageError::Codec(_) | StorageError::Corrupt(_)) => return,
        Err(other) => panic!("{:?} decoding failed with a non-corruption error: {other}", input),
    };
    match decode_record(input.kind, &encoded) {
        Ok(again) => assert_eq!(again, encoded, "{input:?} re-encodes unstably"),
        Err(error) => panic!("{input:?} decoded, but its encoding {encoded:?} does not: {error}"),
    }
}

/// A client store file with a record in every table, written once per process by the store.
pub fn sample_file() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let path = crate::scratch_path("client-store-sample");
        let _ = std::fs::remove_file(&path);
        let bytes = sample_store_file(&path).expect("the sample store writes");
        let _ = std::fs::remove_file(&path);
        bytes
    })
}

/// A client store file: the sample ([`sample_file`]) with bytes changed (most inputs, so
/// that damage reaches the tables and records), or arbitrary bytes.
#[derive(Debug)]
pub enum StoreFileInput {
    DamagedSample(Vec<(u32, u8)>),
    Bytes(Vec<u8>),
}

impl StoreFileInput {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            StoreFileInput::DamagedSample(changes) => crate::damaged(sample_file(), changes),
            StoreFileInput::Bytes(bytes) => bytes.clone(),
        }
    }
}

impl<'a> Arbitrary<'a> for StoreFileInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<StoreFileInput> {
        if u.ratio(1, 16)? {
            let rest = u.len();
            return Ok(StoreFileInput::Bytes(u.bytes(rest)?.to_vec()));
        }
        let count = u.int_in_range(1..=8)?;
        let changes = (0..count)
            .map(|_| Ok((u.arbitrary::<u32>()?, u.arbitrary::<u8>()?)))
            .collect::<Result<_>>()?;
        Ok(StoreFileInput::DamagedSample(changes))
    }
}

/// Writes the input's file at a path of this process's own, opens it, reads all of it and
/// commits a change (`concord_storage::fuzzing::file::read_store_file`).
pub fn check_store_file(input: &StoreFileInput) -> std::result::Result<usize, StorageError> {
    let path = crate::scratch_path("client-store");
    let _ = std::fs::remove_file(&path);
    let read = read_store_file(&path, &input.bytes());
    let _ = std::fs::remove_file(&path);
    read
}
