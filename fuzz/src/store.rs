//! Fuzzing of what the client's store reads back from disk: arbitrary bytes decoded as each
//! record type, key layout and format version its tables hold
//! (`concord_storage::fuzzing::decode_record`). Decoding never panics; it fails with a
//! typed corruption error ([`StorageError::Codec`] or [`StorageError::Corrupt`]), or gives a
//! record whose encoding decodes to the same record again (no value that reads one way and
//! writes another).

use arbitrary::{Arbitrary, Result, Unstructured};
use concord_storage::StorageError;
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
