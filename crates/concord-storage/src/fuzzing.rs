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

/// Whole store files of the redb backend, damaged as a disk would damage them.
#[cfg(feature = "redb")]
pub mod file {
    use std::collections::BTreeSet;
    use std::future::Future;
    use std::path::Path;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use concord_ot::ReplicaId;
    use concord_protocol::{Identity, SessionId, User, UserId};

    use crate::adapter::OfflineStore;
    use crate::batch::{Batch, Mutation};
    use crate::contract::{full_model_batch, key, model_id};
    use crate::error::StorageError;
    use crate::redb::RedbStore;

    /// Runs a call of the redb backend, which never waits (redb is synchronous).
    fn now<T>(call: impl Future<Output = T>) -> T {
        match pin!(call).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(value) => value,
            Poll::Pending => unreachable!("the redb backend's calls complete at once"),
        }
    }

    /// Creates a store file at `path` (which must not exist) with a record in every table:
    /// two models with snapshots, server operations, pending operations and creation
    /// records, subscriptions, the replica id, sessions, users and identities. Returns the
    /// file's bytes.
    pub fn sample_store_file(path: &Path) -> Result<Vec<u8>, StorageError> {
        let store = RedbStore::open(path, &key())?;
        let user = |name: &str| User {
            id: UserId(name.into()),
            display_name: Some(name.to_uppercase()),
            anonymous: false,
        };
        let people = Batch::new()
            .with(Mutation::Subscribe(vec![model_id(1), model_id(3)]))
            .with(Mutation::SetReplicaId(ReplicaId(9)))
            .with(Mutation::PutSessions(vec![(SessionId("s1".into()), UserId("ann".into()))]))
            .with(Mutation::PutUsers(vec![user("ann"), user("bob")]))
            .with(Mutation::PutIdentities(vec![Identity {
                user: UserId("ann".into()),
                display_name: Some("Ann".into()),
                email: Some("ann@example.org".into()),
            }]));
        now(store.commit_group(vec![full_model_batch(1), full_model_batch(2), people]))?;
        drop(store);
        Ok(std::fs::read(path)?)
    }

    /// Writes `bytes` as the store file at `path`, opens it and reads everything in it as the
    /// client does — every model whole and by its head, its pending operations page by page,
    /// the unsynced summary, subscriptions, replica id and identities — then commits a
    /// change. Returns how many models it lists; any damage is a typed error.
    pub fn read_store_file(path: &Path, bytes: &[u8]) -> Result<usize, StorageError> {
        std::fs::write(path, bytes)?;
        let store = RedbStore::open(path, &key())?;
        let models = now(store.models())?;
        now(store.unsynced())?;
        for summary in &models {
            now(store.load_model(&summary.record.id))?;
            now(store.load_model_head(&summary.record.id))?;
            let mut after = None;
            loop {
                let page = now(store.pending_page(&summary.record.id, after, 2))?;
                match page.last() {
                    Some(last) if after.is_none_or(|seen| last.through > seen) => {
                        after = Some(last.through);
                    }
                    _ => break,
                }
            }
        }
        now(store.subscriptions())?;
        now(store.replica_id())?;
        now(store.identities())?;
        let change = Batch::new().with(Mutation::Subscribe(vec![model_id(7)]));
        now(store.commit_group(vec![change]))?;
        let subscribed: BTreeSet<_> = now(store.subscriptions())?;
        if !subscribed.contains(&model_id(7)) {
            return Err(StorageError::Corrupt("a committed change did not read back".into()));
        }
        Ok(models.len())
    }
}
