//! Fuzzing of what the server's store reads back from disk
//! (`concord_server::fuzzing`): record payloads of every type sealed with a valid checksum
//! (what a forged checksum, or a bug writing a record, would leave), and whole store files —
//! arbitrary bytes, or the committed format fixture with bytes changed. Reading never panics
//! or hangs: a record decodes to a value that re-encodes stably or to a typed error, and a
//! damaged file opens and reads, or fails with a typed [`StoreError`].

use std::path::PathBuf;

use arbitrary::{Arbitrary, Result, Unstructured};
use concord_server::StoreError;
use concord_server::fuzzing::{RecordKind, read_sealed, read_store_file};

/// A store file written by an older format, with models, operations, collections, users and
/// replica owners in it; opening it also runs the migrations.
pub const FIXTURE: &[u8] =
    include_bytes!("../../crates/concord-server/tests/fixtures/server-v3.redb");

/// A payload, and the record type to read it as.
#[derive(Debug)]
pub struct SealedInput {
    pub kind: RecordKind,
    pub payload: Vec<u8>,
}

impl<'a> Arbitrary<'a> for SealedInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<SealedInput> {
        let kind = *u.choose(&RecordKind::ALL)?;
        let rest = u.len();
        Ok(SealedInput { kind, payload: u.bytes(rest)?.to_vec() })
    }
}

pub fn check_sealed(input: &SealedInput) {
    let Ok(encoded) = read_sealed(input.kind, &input.payload) else {
        return;
    };
    match read_sealed(input.kind, &encoded) {
        Ok(again) => assert_eq!(again, encoded, "{input:?} re-encodes unstably"),
        Err(error) => panic!("{input:?} decoded, but its encoding {encoded:?} does not: {error}"),
    }
}

/// A store file: the fixture with bytes changed (most inputs, so that damage reaches past
/// the file header into tables and records), or arbitrary bytes.
#[derive(Debug)]
pub enum FileInput {
    DamagedFixture(Vec<(u32, u8)>),
    Bytes(Vec<u8>),
}

impl FileInput {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            FileInput::DamagedFixture(changes) => {
                let mut file = FIXTURE.to_vec();
                for &(at, byte) in changes {
                    let at = at as usize % file.len();
                    file[at] = byte;
                }
                file
            }
            FileInput::Bytes(bytes) => bytes.clone(),
        }
    }
}

impl<'a> Arbitrary<'a> for FileInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<FileInput> {
        if u.ratio(1, 16)? {
            let rest = u.len();
            return Ok(FileInput::Bytes(u.bytes(rest)?.to_vec()));
        }
        let count = u.int_in_range(1..=8)?;
        let changes = (0..count)
            .map(|_| Ok((u.arbitrary::<u32>()?, u.arbitrary::<u8>()?)))
            .collect::<Result<_>>()?;
        Ok(FileInput::DamagedFixture(changes))
    }
}

/// Opens the input's file in a directory of this process's own and reads all of it.
pub fn check_file(input: &FileInput) -> std::result::Result<usize, StoreError> {
    let dir = scratch_dir();
    // A leftover from the last input, which this process wrote and no longer holds open.
    let _ = std::fs::remove_dir_all(&dir);
    read_store_file(&dir, &input.bytes())
}

fn scratch_dir() -> PathBuf {
    std::env::temp_dir().join(format!("concord-fuzz-server-store-{}", std::process::id()))
}
