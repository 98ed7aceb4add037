//! `concord-storage` is Concord's offline store: the [`StorageAdapter`] and
//! [`OfflineStore`] traits, the records a store holds ([`ModelRecord`], [`Snapshot`],
//! [`PendingOperation`], [`CreationRecord`] …), the [`Batch`] of [`Mutation`]s that is the
//! only way to change a store, and the backends.
//!
//! One store exists per (server, user) ([`StoreKey`]). Its reads are small (every model's
//! summary, one model's full state, the subscription set, the replica id, the identity
//! cache); its one write is [`OfflineStore::commit`], atomic and durable when it returns.
//! Reads never see a batch in part.
//!
//! Backends: [`memory`] (always; no persistence), `redb` (feature `redb`, native only:
//! a file per store, fsynced on commit, group commit, format versioning, refuses a second
//! opener) and `indexeddb` (feature `indexeddb`, wasm32 only — the feature enables nothing
//! on other targets: a database per store in the browser, with the same guarantees). The
//! crate builds for `wasm32-unknown-unknown` without the `redb` feature. [`contract`] is the
//! behaviour every backend must show, as a reusable test suite; [`faults`] wraps any
//! adapter to make commits fail and stores crash on a test's command.
//!
//! This crate is not the sync engine: it stores what the engine tells it to, checks the
//! invariants listed on [`Mutation`], and decides nothing. It reads no clock and draws no
//! random numbers. `docs/storage.md` describes the records, batches and the file format.

mod adapter;
mod batch;
pub mod contract;
mod encoding;
mod error;
pub mod faults;
#[cfg(any(test, all(feature = "indexeddb", target_arch = "wasm32")))]
mod footprint;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(all(feature = "indexeddb", target_arch = "wasm32"))]
pub mod indexeddb;
pub mod memory;
#[cfg(any(test, all(feature = "indexeddb", target_arch = "wasm32")))]
mod overlay;
mod records;
#[cfg(feature = "redb")]
pub mod redb;
mod store;

pub use adapter::{MaybeSendSync, OfflineStore, StorageAdapter};
pub use batch::{Batch, Mutation};
pub use encoding::FORMAT_VERSION;
pub use error::StorageError;
#[cfg(all(feature = "indexeddb", target_arch = "wasm32"))]
pub use indexeddb::{IdbAdapter, IdbStore};
pub use memory::MemoryAdapter;
pub use records::{
    CreationRecord, IdentityCache, ModelRecord, ModelState, ModelSummary, PendingOperation,
    Snapshot, StoreKey, Tombstone, Unsynced,
};
#[cfg(feature = "redb")]
pub use redb::{RedbAdapter, RedbStore};
