//! The byte format of a store: table names, key layouts and the record envelope. Everything
//! that knows how a record or a key is laid out in bytes is in this module.
//!
//! A store is a set of byte-keyed tables ([`Table`]). Values are records in an envelope:
//!
//! ```text
//! byte 0   record encoding (RECORD_ENCODING = 1: postcard 1.x)
//! 1..      the record, postcard 1.x
//! ```
//!
//! Keys: a model's own row is keyed by the model id's UTF-8 bytes; a model's operations by
//! `id bytes, 0x00, u64 big-endian` (model ids contain no control character, so `0x00` sorts
//! a model's rows together and before any longer id). The store-wide format version lives in
//! the `meta` table under [`META_FORMAT`], as a little-endian `u32` outside any envelope, so
//! that every future version can read it.

use concord_protocol::ModelId;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StorageError;

/// The store format this version of the crate writes. Bump it, and add a migration from the
/// previous version and a fixture store of the new version (`tests/format.rs`), whenever a
/// table, a key layout or a stored record type changes.
pub const FORMAT_VERSION: u32 = 3;

/// The first byte of every record.
const RECORD_ENCODING: u8 = 1;

/// The tables of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Table {
    /// Store-wide values: format version, store key, replica id.
    Meta,
    /// Model id → `ModelSummary`.
    Models,
    /// Model id → `Snapshot`.
    Snapshots,
    /// (model id, version) → `CommittedOperation`.
    ServerOperations,
    /// (model id, first seq) → `PendingOperation` (one change, or a run of seqs: format 3).
    Pending,
    /// Model id → `CreationRecord`.
    Creations,
    /// Model id → empty.
    Subscriptions,
    /// Session id → `UserId`.
    Sessions,
    /// User id → `User`.
    Users,
    /// User id → `Identity` (display name and email, as the server showed them). Format 2.
    Identities,
}

impl Table {
    pub(crate) const ALL: [Table; 10] = [
        Table::Meta,
        Table::Models,
        Table::Snapshots,
        Table::ServerOperations,
        Table::Pending,
        Table::Creations,
        Table::Subscriptions,
        Table::Sessions,
        Table::Users,
        Table::Identities,
    ];

    /// Its position in [`Table::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Its name in the file.
    #[cfg_attr(not(feature = "redb"), allow(dead_code))]
    pub(crate) fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Models => "models",
            Table::Snapshots => "snapshots",
            Table::ServerOperations => "server_operations",
            Table::Pending => "pending",
            Table::Creations => "creations",
            Table::Subscriptions => "subscriptions",
            Table::Sessions => "sessions",
            Table::Users => "users",
            Table::Identities => "identities",
        }
    }
}

/// `meta` key of the format version (`u32`, little-endian, no envelope).
pub(crate) const META_FORMAT: &[u8] = b"format_version";
/// `meta` key of the `StoreKey` the store was created for.
pub(crate) const META_STORE_KEY: &[u8] = b"store_key";
/// `meta` key of the replica id.
pub(crate) const META_REPLICA_ID: &[u8] = b"replica_id";

pub(crate) fn encode_format(version: u32) -> [u8; 4] {
    version.to_le_bytes()
}

pub(crate) fn decode_format(bytes: &[u8]) -> Result<u32, StorageError> {
    let bytes: [u8; 4] = bytes.try_into().map_err(|_| {
        StorageError::Corrupt(format!("format version is {} bytes long, not 4", bytes.len()))
    })?;
    Ok(u32::from_le_bytes(bytes))
}

/// Encodes a record in its envelope.
pub(crate) fn encode<T: Serialize>(record: &T) -> Result<Vec<u8>, StorageError> {
    postcard::to_extend(record, vec![RECORD_ENCODING])
        .map_err(|e| StorageError::Codec(e.to_string()))
}

/// Decodes a record from its envelope. Trailing bytes are an error.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    match bytes.split_first() {
        Some((&RECORD_ENCODING, body)) => {
            let (record, rest) =
                postcard::take_from_bytes(body).map_err(|e| StorageError::Codec(e.to_string()))?;
            if rest.is_empty() {
                Ok(record)
            } else {
                Err(StorageError::Codec(format!("{} trailing bytes after a record", rest.len())))
            }
        }
        Some((other, _)) => Err(StorageError::Codec(format!("unknown record encoding {other}"))),
        None => Err(StorageError::Codec("empty record".into())),
    }
}

/// The key of a model's own row.
pub(crate) fn model_key(model: &ModelId) -> &[u8] {
    model.as_str().as_bytes()
}

/// The key of one of a model's numbered rows (an operation).
pub(crate) fn numbered_key(model: &ModelId, n: u64) -> Vec<u8> {
    let id = model.as_str().as_bytes();
    let mut key = Vec::with_capacity(id.len() + 9);
    key.extend_from_slice(id);
    key.push(0);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

/// The key range `[start, end)` of a model's numbered rows with numbers `<= through`, or of
/// all of them.
pub(crate) fn numbered_range(model: &ModelId, through: Option<u64>) -> (Vec<u8>, Vec<u8>) {
    let start = numbered_key(model, 0);
    let end = match through {
        Some(n) if n < u64::MAX => numbered_key(model, n + 1),
        _ => {
            let mut end = model.as_str().as_bytes().to_vec();
            end.push(1);
            end
        }
    };
    (start, end)
}

/// The number in a numbered key.
pub(crate) fn key_number(key: &[u8]) -> Result<u64, StorageError> {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StorageError::Corrupt("malformed operation key".into()))
}

/// Decodes a key that is a UTF-8 id.
pub(crate) fn key_str(key: &[u8]) -> Result<&str, StorageError> {
    std::str::from_utf8(key).map_err(|_| StorageError::Corrupt("key is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_keys_sort_by_model_then_number() {
        let a = ModelId::new("a").unwrap();
        let ab = ModelId::new("ab").unwrap();
        let mut keys = vec![
            numbered_key(&ab, 0),
            numbered_key(&a, 256),
            numbered_key(&a, 1),
            numbered_key(&a, u64::MAX),
        ];
        keys.sort();
        assert_eq!(
            keys,
            vec![
                numbered_key(&a, 1),
                numbered_key(&a, 256),
                numbered_key(&a, u64::MAX),
                numbered_key(&ab, 0),
            ]
        );
        let (start, end) = numbered_range(&a, None);
        assert!(keys[..3].iter().all(|k| *k >= start && *k < end));
        assert!(keys[3] >= end);
        let (_, end) = numbered_range(&a, Some(1));
        assert!(keys[0] < end && keys[1] >= end);
        assert_eq!(key_number(&keys[1]).unwrap(), 256);
    }

    #[test]
    fn records_carry_their_envelope() {
        let bytes = encode(&(7u64, "x".to_string())).unwrap();
        assert_eq!(bytes, [RECORD_ENCODING, 7, 1, b'x']);
        assert_eq!(decode::<(u64, String)>(&bytes).unwrap(), (7, "x".into()));
        assert!(matches!(decode::<(u64, String)>(&[9, 7, 1, b'x']), Err(StorageError::Codec(_))));
        assert!(matches!(decode::<u64>(&[RECORD_ENCODING, 7, 0]), Err(StorageError::Codec(_))));
        assert!(matches!(decode::<u64>(&[]), Err(StorageError::Codec(_))));
    }
}
