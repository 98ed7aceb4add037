//! The two traits every backend implements: [`StorageAdapter`] opens stores,
//! [`OfflineStore`] is one open store.
//!
//! Both are object-safe through `async-trait`, so that an application picks its backend at
//! run time (`Box<dyn StorageAdapter>`). Their futures are `Send` on native targets and not
//! on wasm32, where IndexedDB futures cannot be.

use std::collections::BTreeSet;

use async_trait::async_trait;
use concord_ot::ReplicaId;
use concord_protocol::ModelId;

use crate::batch::Batch;
use crate::error::StorageError;
use crate::records::{
    IdentityCache, ModelState, ModelSummary, PendingOperation, StoreKey, Unsynced,
};

/// `Send + Sync` on native targets; nothing on wasm32, where browser handles are neither.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSendSync: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync + ?Sized> MaybeSendSync for T {}

/// `Send + Sync` on native targets; nothing on wasm32, where browser handles are neither.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSendSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSendSync for T {}

/// A place where stores live (a directory, a browser origin's IndexedDB, memory), chosen
/// by the application and handed to the client before the user is known.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait StorageAdapter: MaybeSendSync {
    /// Opens the store for `key` (one per server and user), creating it empty if it does
    /// not exist.
    ///
    /// A store is open at most once at a time, across processes, tabs and handles: while
    /// one [`OfflineStore`] for `key` is alive, opening it again fails with
    /// [`StorageError::InUse`] at once (never blocks, never changes the store). Dropping the
    /// `OfflineStore` closes it.
    ///
    /// A store written by an older format version is migrated forward in one atomic step
    /// before this returns; a newer one is refused with [`StorageError::NewerFormat`]; one
    /// recorded under another key with [`StorageError::WrongStore`]; bytes that are not a
    /// valid store with [`StorageError::Corrupt`]. None of these errors changes the store.
    async fn open(&self, key: &StoreKey) -> Result<Box<dyn OfflineStore>, StorageError>;

    /// Deletes the store for `key` and everything in it (for example when the user signs
    /// out). Deleting a store that does not exist succeeds. Fails with
    /// [`StorageError::InUse`] while the store is open.
    async fn destroy(&self, key: &StoreKey) -> Result<(), StorageError>;
}

/// A borrowed adapter is an adapter, so that a wrapper such as
/// [`FaultyAdapter`](crate::faults::FaultyAdapter) can take one.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<T: StorageAdapter + ?Sized> StorageAdapter for &T {
    async fn open(&self, key: &StoreKey) -> Result<Box<dyn OfflineStore>, StorageError> {
        (**self).open(key).await
    }

    async fn destroy(&self, key: &StoreKey) -> Result<(), StorageError> {
        (**self).destroy(key).await
    }
}

/// One open store: a few reads and one write, [`commit`](OfflineStore::commit).
///
/// Every read sees the state after some set of whole committed batches: never a batch in
/// part. Reads are consistent with the commits made through this handle (a read started
/// after `commit` returned sees that commit). Methods take `&self`; a backend serialises
/// commits internally.
///
/// Native backends may do blocking file I/O inside these futures (the redb backend does):
/// a client that must not block its executor runs them on a blocking-capable thread.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait OfflineStore: MaybeSendSync + std::fmt::Debug {
    /// The key the store was opened for.
    fn key(&self) -> &StoreKey;

    /// Every model record, with what the store knows about each model's data, in model id
    /// order. Loads no snapshot and no operation.
    async fn models(&self) -> Result<Vec<ModelSummary>, StorageError>;

    /// The models with something the server has not confirmed — changes, a creation, a
    /// deletion — by id only (what a connection syncs), without holding every summary.
    async fn unsynced(&self) -> Result<Unsynced, StorageError>;

    /// One model's full state (record, snapshot, server operations after it, pending
    /// operations, creation record), or `None` if the store has no record for it.
    async fn load_model(&self, model: &ModelId) -> Result<Option<ModelState>, StorageError>;

    /// One model without its pending operations (`pending` is empty; `summary.pending_count`
    /// and `last_pending_seq` say what is stored), or `None` if the store has no record for
    /// it. Read the pending operations with [`OfflineStore::pending_page`], so that a model
    /// with many of them is never held in memory as one list.
    async fn load_model_head(&self, model: &ModelId) -> Result<Option<ModelState>, StorageError>;

    /// At most `limit` (at least one) of a model's pending records, each one change or a
    /// run, whose first seq is above `after` (all, from the first, if `None`), in seq order.
    /// An empty page means there are none after `after`. Pages are separate reads: a caller
    /// that must see one state checks the head's summary against what the pages add up to.
    async fn pending_page(
        &self,
        model: &ModelId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<PendingOperation>, StorageError>;

    /// The subscription set.
    async fn subscriptions(&self) -> Result<BTreeSet<ModelId>, StorageError>;

    /// The store's replica id; `None` until a batch sets it
    /// ([`Mutation::SetReplicaId`](crate::Mutation::SetReplicaId)). The store does not
    /// choose one: randomness is the caller's.
    async fn replica_id(&self) -> Result<Option<ReplicaId>, StorageError>;

    /// The identity cache: users behind session ids.
    async fn identities(&self) -> Result<IdentityCache, StorageError>;

    /// Applies `batch` atomically and durably: when this returns `Ok`, the whole batch is
    /// stored and survives a crash or power loss (to the extent the medium honours
    /// flushes); when it returns an error, or the process dies before it returns, either
    /// none of it is stored or (process death after the flush) all of it.
    ///
    /// A rejected batch ([`StorageError::InvalidBatch`]) changes nothing. Same as
    /// `commit_group(vec![batch])`.
    async fn commit(&self, batch: Batch) -> Result<(), StorageError> {
        self.commit_group(vec![batch]).await
    }

    /// Group commit: applies `batches` in order as one atomic, durable unit, sharing one
    /// flush. All or nothing: if any batch is rejected, none is applied and the error names
    /// it. An empty list is a no-op.
    async fn commit_group(&self, batches: Vec<Batch>) -> Result<(), StorageError>;
}
