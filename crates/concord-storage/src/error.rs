//! The store's error type.

use crate::records::StoreKey;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Another process (or another handle in this process) has the store open. Retrying
    /// after it closes the store succeeds; nothing was changed.
    #[error("store is in use by another process or handle: {store}")]
    InUse { store: String },
    /// The store was written by a newer version of Concord; this version does not open it
    /// (and does not change it).
    #[error("store format version {found} is newer than the supported version {supported}")]
    NewerFormat { found: u32, supported: u32 },
    /// The store belongs to another (server, user) pair than the one it was opened for.
    #[error("store belongs to {found}, not to {expected}")]
    WrongStore { expected: StoreKey, found: StoreKey },
    /// The store's bytes are not a valid store: not one at all, truncated, or damaged.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// A stored record could not be decoded, or a record could not be encoded.
    #[error("record codec error: {0}")]
    Codec(String),
    /// A batch was rejected; nothing of it (nor of the other batches committed with it)
    /// was applied. This is a bug in the caller.
    #[error("batch {batch}, mutation {mutation} rejected: {reason}")]
    InvalidBatch {
        /// The index of the batch among those committed together.
        batch: usize,
        /// The index of the mutation within the batch.
        mutation: usize,
        reason: String,
    },
    /// An I/O error of the medium.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Any other failure of the backend (its message).
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The store was closed while this handle was in use (for example, in a browser,
    /// another connection upgraded or deleted its database); the handle stays unusable.
    #[error("store is closed")]
    Closed,
}
