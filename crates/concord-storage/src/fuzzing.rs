//! Record decoding for Concord's fuzz targets, which feed it arbitrary bytes as a damaged
//! disk would. Not part of the crate's API: it may change with the store format.

use serde::Serialize;
use serde::de::DeserializeOwned;

use concord_ot::ReplicaId;
use concord_protocol::{CommittedOperation, User, UserId};

use crate::encoding::{decode, decode_format, encode, key_number, key_str};
use crate::error::StorageError;
use crate::records::{CreationRecord, ModelSummary, PendingOperation, Snapshot, StoreKey};

/// What the store reads from bytes: every record type of its tables, the format version and
/// the key layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    StoreKey,
    ModelSummary,
    Snapshot,
    ServerOperation,
    PendingOperation,
    Creation,
    SessionUser,
    User,
    ReplicaId,
    FormatVersion,
    NumberedKey,
    IdKey,
}

impl RecordKind {
    pub const ALL: [RecordKind; 12] = [
        RecordKind::StoreKey,
        RecordKind::ModelSummary,
        RecordKind::Snapshot,
        RecordKind::ServerOperation,
        RecordKind::PendingOperation,
        RecordKind::Creation,
        RecordKind::SessionUser,
        RecordKind::User,
        RecordKind::ReplicaId,
        RecordKind::FormatVersion,
        RecordKind::NumberedKey,
        RecordKind::IdKey,
    ];
}

/// Decodes `bytes` as the store does for `kind`, and returns what it decoded, encoded again
/// (the same bytes for a key or a version; an enveloped record otherwise), so that a caller
/// can check that decoding the re-encoding gives the same record.
pub fn decode_record(kind: RecordKind, bytes: &[u8]) -> Result<Vec<u8>, StorageError> {
    match kind {
        RecordKind::StoreKey => reencode::<StoreKey>(bytes),
        RecordKind::ModelSummary => reencode::<ModelSummary>(bytes),
        RecordKind::Snapshot => reencode::<Snapshot>(bytes),
        RecordKind::ServerOperation => reencode::<CommittedOperation>(bytes),
        RecordKind::PendingOperation => reencode::<PendingOperation>(bytes),
        RecordKind::Creation => reencode::<CreationRecord>(bytes),
        RecordKind::SessionUser => reencode::<UserId>(bytes),
        RecordKind::User => reencode::<User>(bytes),
        RecordKind::ReplicaId => reencode::<ReplicaId>(bytes),
        RecordKind::FormatVersion => Ok(decode_format(bytes)?.to_le_bytes().to_vec()),
        RecordKind::NumberedKey => Ok(key_number(bytes).map(|_| bytes.to_vec())?),
        RecordKind::IdKey => Ok(key_str(bytes)?.as_bytes().to_vec()),
    }
}

fn reencode<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Result<Vec<u8>, StorageError> {
    encode(&decode::<T>(bytes)?)
}
