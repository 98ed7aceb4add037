//! Fuzzing of what the server's store reads back from disk
//! (`concord_server::fuzzing`): record payloads of every type sealed with a valid checksum
//! (what a forged checksum, or a bug writing a record, would leave), and whole store files —
//! arbitrary bytes, or with bytes changed: a file of the current format holding a record in
//! every table ([`current_file`]), or the committed file of an older format (which opening
//! migrates); and the log beside the file, its records' contents damaged under a checksum
//! that holds. Reading never panics or hangs: a record decodes to a value that re-encodes
//! stably or to a typed error, a damaged file opens and reads, or fails with a typed
//! [`StoreError`], and so does a file whose log holds damaged commits.

use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Result, Unstructured};
use concord_server::StoreError;
use concord_server::fuzzing::{
    RecordKind, read_sealed, read_store_file, read_store_with_log, sample_log_payload,
    sample_store_file,
};

/// A store file written by an older format, with models, operations, collections, users and
/// replica owners in it; opening it also runs the migrations.
pub const FIXTURE: &[u8] =
    include_bytes!("../../crates/concord-server/tests/fixtures/server-v3.redb");

/// A store file of the current format with a record in every table (identities, checkpoints,
/// operation users and index entries included), written once per process by the store.
pub fn current_file() -> &'static [u8] {
    static FILE: OnceLock<Vec<u8>> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = scratch_dir().with_extension("sample");
        let _ = std::fs::remove_dir_all(&dir);
        let bytes = sample_store_file(&dir).expect("the sample store writes");
        let _ = std::fs::remove_dir_all(&dir);
        bytes
    })
}

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

/// A store file: a valid one with bytes changed (most inputs, so that damage reaches past
/// the file header into tables and records), or arbitrary bytes.
#[derive(Debug)]
pub enum FileInput {
    /// The current-format file ([`current_file`]) with bytes changed.
    DamagedCurrent(Vec<(u32, u8)>),
    /// The older-format [`FIXTURE`] with bytes changed.
    DamagedFixture(Vec<(u32, u8)>),
    Bytes(Vec<u8>),
}

impl FileInput {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            FileInput::DamagedCurrent(changes) => crate::damaged(current_file(), changes),
            FileInput::DamagedFixture(changes) => crate::damaged(FIXTURE, changes),
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
        // Mostly the current format, whose tables the server reads today.
        Ok(if u.ratio(1, 4)? {
            FileInput::DamagedFixture(changes)
        } else {
            FileInput::DamagedCurrent(changes)
        })
    }
}

/// Opens the input's file in a directory of this process's own and reads all of it.
pub fn check_file(input: &FileInput) -> std::result::Result<usize, StoreError> {
    let dir = scratch_dir();
    // A leftover from an input that panicked, which this process no longer holds open.
    let _ = std::fs::remove_dir_all(&dir);
    let read = read_store_file(&dir, &input.bytes());
    let _ = std::fs::remove_dir_all(&dir);
    read
}

/// The commits of a log beside the current-format file ([`current_file`]): each the sample
/// commit ([`sample_log_payload`]) with bytes changed, or arbitrary bytes.
#[derive(Debug)]
pub struct LogInput(pub Vec<PayloadInput>);

/// One logged commit's payload.
#[derive(Debug, Clone)]
pub enum PayloadInput {
    DamagedSample(Vec<(u32, u8)>),
    Bytes(Vec<u8>),
}

impl PayloadInput {
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            PayloadInput::DamagedSample(changes) => {
                let mut payload = sample_log_payload();
                for &(at, byte) in changes {
                    let at = at as usize % payload.len();
                    payload[at] = byte;
                }
                payload
            }
            PayloadInput::Bytes(bytes) => bytes.clone(),
        }
    }
}

impl<'a> Arbitrary<'a> for LogInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<LogInput> {
        let count = u.int_in_range(1..=3)?;
        let mut payloads = Vec::with_capacity(count);
        for _ in 0..count {
            payloads.push(if u.ratio(1, 8)? {
                let len = u.int_in_range(0..=256)?;
                PayloadInput::Bytes(u.bytes(len.min(u.len()))?.to_vec())
            } else {
                let changes = u.int_in_range(0..=6)?;
                let changes = (0..changes)
                    .map(|_| Ok((u.arbitrary::<u32>()?, u.arbitrary::<u8>()?)))
                    .collect::<Result<_>>()?;
                PayloadInput::DamagedSample(changes)
            });
        }
        Ok(LogInput(payloads))
    }
}

/// Opens the current-format file with the input's commits logged beside it, in a directory
/// of this process's own, and reads all of it.
pub fn check_log(input: &LogInput) -> std::result::Result<usize, StoreError> {
    let dir = scratch_dir();
    let _ = std::fs::remove_dir_all(&dir);
    let payloads: Vec<Vec<u8>> = input.0.iter().map(PayloadInput::bytes).collect();
    let read = read_store_with_log(&dir, current_file(), &payloads);
    let _ = std::fs::remove_dir_all(&dir);
    read
}

fn scratch_dir() -> PathBuf {
    crate::scratch_path("server-store")
}
