//! How one record is stored: a CRC-32 of the record's table, key and payload, then the
//! payload (postcard). redb checks nothing of what it reads back after a clean shutdown, so a
//! byte flipped on disk (or by hand) would otherwise be served as data; with the checksum it
//! is reported, and a record copied under another key or into another table fails too.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Bytes of the checksum in front of every record.
const CHECKSUM_BYTES: usize = 4;

/// Why a stored record cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Damage {
    #[error("its checksum does not match")]
    Checksum,
    #[error("it is shorter than a checksum")]
    Truncated,
    #[error("it does not decode: {0}")]
    Decode(String),
}

fn checksum<K: Serialize + ?Sized>(table: &str, key: &K, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(table.as_bytes());
    // A separator, so that the table name and the key cannot run into each other.
    hasher.update(&[0]);
    // postcard cannot fail on the plain tuples that keys are.
    hasher.update(&postcard::to_stdvec(key).unwrap_or_default());
    hasher.update(payload);
    hasher.finalize()
}

/// `payload` (already encoded) as stored under `key` in `table`.
pub(crate) fn seal_bytes<K: Serialize + ?Sized>(table: &str, key: &K, payload: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(CHECKSUM_BYTES + payload.len());
    bytes.extend_from_slice(&checksum(table, key, payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// `value` as stored under `key` in `table`.
pub(crate) fn seal<K: Serialize + ?Sized, T: Serialize>(
    table: &str,
    key: &K,
    value: &T,
) -> Vec<u8> {
    // postcard cannot fail on these plain types into a Vec.
    seal_bytes(table, key, &postcard::to_stdvec(value).unwrap_or_default())
}

/// The value stored as `bytes` under `key` in `table`, if its checksum holds and it decodes.
pub(crate) fn unseal<K: Serialize + ?Sized, T: DeserializeOwned>(
    table: &str,
    key: &K,
    bytes: &[u8],
) -> Result<T, Damage> {
    let Some((stored, payload)) = bytes.split_first_chunk::<CHECKSUM_BYTES>() else {
        return Err(Damage::Truncated);
    };
    if u32::from_le_bytes(*stored) != checksum(table, key, payload) {
        return Err(Damage::Checksum);
    }
    postcard::from_bytes(payload).map_err(|e| Damage::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_only_where_and_as_it_was_stored() {
        let key = ("acme/notes", "doc", 7u64);
        let sealed = seal("operations", &key, &"héllo".to_string());
        assert_eq!(unseal::<_, String>("operations", &key, &sealed), Ok("héllo".into()));
        // Every single flipped bit is noticed.
        for bit in 0..sealed.len() * 8 {
            let mut flipped = sealed.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(unseal::<_, String>("operations", &key, &flipped).is_err(), "bit {bit}");
        }
        // Under another key or in another table, it is damaged too.
        let elsewhere = ("acme/notes", "doc", 8u64);
        assert_eq!(unseal::<_, String>("operations", &elsewhere, &sealed), Err(Damage::Checksum));
        assert_eq!(unseal::<_, String>("snapshots", &key, &sealed), Err(Damage::Checksum));
        assert_eq!(unseal::<_, String>("operations", &key, &sealed[..3]), Err(Damage::Truncated));
        // A payload that is not the type asked for is damage as well.
        let number = seal("operations", &key, &7u8);
        assert!(matches!(
            unseal::<_, (String, u64)>("operations", &key, &number),
            Err(Damage::Decode(_))
        ));
    }
}
