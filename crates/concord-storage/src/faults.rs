//! Storage faults on demand, for tests: [`FaultyAdapter`] wraps any adapter, and its
//! [`Faults`] handle, kept by the test, makes commits fail and stores crash.
//!
//! - A **clean** failure ([`Fault::Clean`]): the commit returns an error and none of it is
//!   applied, like a write error before the flush. It is made by the backend itself: the
//!   wrapper adds to the group a batch that every store must reject, so the backend runs
//!   all the commit's writes in its transaction and then discards them.
//! - An **in-doubt** failure ([`Fault::InDoubt`]): the commit is applied and durable, but
//!   the caller gets an error, like a process that dies after the flush and before hearing
//!   of it. The caller cannot know the outcome.
//! - A **crash** ([`Faults::crash`]): every store open through the adapter is dropped at
//!   once; its handle answers every call with [`StorageError::Closed`], and the store can
//!   be opened again — from what was durable: with the memory backend every commit that
//!   was applied, with redb the file.
//!
//! Every call of `commit` or `commit_group` on a store of the adapter is one commit; they
//! are numbered from 1 in call order across the adapter's stores. An injected error is a
//! [`StorageError::Io`] carrying an [`InjectedFault`].
//!
//! ```
//! # use concord_storage::faults::{Fault, FaultyAdapter, InjectedFault};
//! # use concord_storage::{Batch, MemoryAdapter, Mutation, StorageAdapter, StoreKey};
//! # use concord_ot::ReplicaId;
//! # pollster::block_on(async {
//! let adapter = FaultyAdapter::new(MemoryAdapter::new());
//! let faults = adapter.faults().clone();
//! let store = adapter.open(&StoreKey::new("server", "user")).await.unwrap();
//! faults.fail_next(Fault::Clean);
//! let batch = Batch::new().with(Mutation::SetReplicaId(ReplicaId(7)));
//! let error = store.commit(batch.clone()).await.unwrap_err();
//! assert_eq!(InjectedFault::of(&error).map(|f| f.fault), Some(Fault::Clean));
//! assert_eq!(store.replica_id().await.unwrap(), None);
//! store.commit(batch).await.unwrap();
//! # });
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use async_trait::async_trait;
use concord_ot::{DiscreteOperation, ElementId, OperationKind, ReplicaId};
use concord_protocol::ModelId;

use crate::adapter::{OfflineStore, StorageAdapter};
use crate::batch::{Batch, Mutation};
use crate::error::StorageError;
use crate::records::{
    IdentityCache, ModelState, ModelSummary, PendingOperation, StoreKey, Unsynced,
};

/// How an injected commit failure behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The commit fails and none of it is applied.
    Clean,
    /// The commit is applied (durable), then reported as failed.
    InDoubt,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Fault::Clean => "clean",
            Fault::InDoubt => "in-doubt",
        })
    }
}

/// What an injected failure returns, inside [`StorageError::Io`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("injected {fault} failure of commit {commit}")]
pub struct InjectedFault {
    /// The commit's number (from 1, across the adapter's stores).
    pub commit: u64,
    pub fault: Fault,
}

impl InjectedFault {
    /// The injected failure behind `error`, if it is one.
    pub fn of(error: &StorageError) -> Option<&InjectedFault> {
        match error {
            StorageError::Io(io) => io.get_ref()?.downcast_ref(),
            _ => None,
        }
    }

    fn into_error(self) -> StorageError {
        StorageError::Io(std::io::Error::other(self))
    }
}

/// One open store's slot: emptied by a crash.
type Slot = Mutex<Option<Arc<dyn OfflineStore>>>;

/// The test's handle on a [`FaultyAdapter`]: plans failures and crashes. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Commits attempted so far.
    commits: u64,
    /// Failures planned for given commit numbers.
    planned: BTreeMap<u64, Fault>,
    /// A failure for every commit not otherwise planned.
    every: Option<Fault>,
    injected: u64,
    crashes: u64,
    stores: Vec<Weak<Slot>>,
}

/// Locks without panicking: a panic elsewhere in a test leaves the state usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Faults {
    pub fn new() -> Faults {
        Faults::default()
    }

    /// The next commit fails with `fault`.
    pub fn fail_next(&self, fault: Fault) {
        self.fail_nth(1, fault);
    }

    /// The `n`-th commit from now fails with `fault` (1: the next; 0 counts as 1).
    pub fn fail_nth(&self, n: u64, fault: Fault) {
        let mut state = lock(&self.state);
        let at = state.commits + n.max(1);
        state.planned.insert(at, fault);
    }

    /// Every commit from now on fails with `fault`, until [`Faults::heal`].
    pub fn fail_every(&self, fault: Fault) {
        lock(&self.state).every = Some(fault);
    }

    /// Cancels every planned failure: commits succeed again.
    pub fn heal(&self) {
        let mut state = lock(&self.state);
        state.planned.clear();
        state.every = None;
    }

    /// Drops every store open through the adapter, as if the process died: each handle
    /// answers [`StorageError::Closed`] from now on, and the store can be opened again. A
    /// call already under way finishes on the dropped store first.
    pub fn crash(&self) {
        let slots: Vec<Arc<Slot>> = {
            let mut state = lock(&self.state);
            state.crashes += 1;
            state.stores.drain(..).filter_map(|slot| slot.upgrade()).collect()
        };
        let dropped: Vec<_> = slots.iter().filter_map(|slot| lock(slot).take()).collect();
        drop(dropped);
    }

    /// How many commits were attempted (failed or not).
    pub fn commits(&self) -> u64 {
        lock(&self.state).commits
    }

    /// How many commits failed by injection.
    pub fn injected(&self) -> u64 {
        lock(&self.state).injected
    }

    /// How many times [`Faults::crash`] was called.
    pub fn crashes(&self) -> u64 {
        lock(&self.state).crashes
    }

    /// Numbers the next commit and says whether it fails.
    fn next_commit(&self) -> (u64, Option<Fault>) {
        let mut state = lock(&self.state);
        state.commits += 1;
        let number = state.commits;
        let fault = state.planned.remove(&number).or(state.every);
        if fault.is_some() {
            state.injected += 1;
        }
        (number, fault)
    }

    fn register(&self, slot: &Arc<Slot>) {
        let mut state = lock(&self.state);
        state.stores.retain(|slot| slot.strong_count() > 0);
        state.stores.push(Arc::downgrade(slot));
    }
}

/// An adapter whose stores fail when its [`Faults`] say so; otherwise it is `inner`.
#[derive(Debug, Clone)]
pub struct FaultyAdapter<A> {
    inner: A,
    faults: Faults,
}

impl<A> FaultyAdapter<A> {
    /// Wraps `inner` with a new [`Faults`] handle ([`FaultyAdapter::faults`]).
    pub fn new(inner: A) -> FaultyAdapter<A> {
        FaultyAdapter::with_faults(inner, Faults::new())
    }

    /// Wraps `inner`, controlled by `faults` (which may control other adapters too).
    pub fn with_faults(inner: A, faults: Faults) -> FaultyAdapter<A> {
        FaultyAdapter { inner, faults }
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    pub fn inner(&self) -> &A {
        &self.inner
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<A: StorageAdapter> StorageAdapter for FaultyAdapter<A> {
    async fn open(&self, key: &StoreKey) -> Result<Box<dyn OfflineStore>, StorageError> {
        let store: Arc<dyn OfflineStore> = Arc::from(self.inner.open(key).await?);
        // On wasm32 stores are neither `Send` nor `Sync` and one thread runs everything; one
        // `Arc` serves both targets.
        #[cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]
        let slot = Arc::new(Mutex::new(Some(store)));
        self.faults.register(&slot);
        Ok(Box::new(FaultyStore { key: key.clone(), slot, faults: self.faults.clone() }))
    }

    async fn destroy(&self, key: &StoreKey) -> Result<(), StorageError> {
        self.inner.destroy(key).await
    }
}

/// A store opened through a [`FaultyAdapter`].
#[derive(Debug)]
struct FaultyStore {
    key: StoreKey,
    slot: Arc<Slot>,
    faults: Faults,
}

impl FaultyStore {
    /// The wrapped store, unless it crashed.
    fn live(&self) -> Result<Arc<dyn OfflineStore>, StorageError> {
        lock(&self.slot).clone().ok_or(StorageError::Closed)
    }
}

/// A batch every store rejects, whatever it holds: a model without a record is refused,
/// and one with a record cannot take a repeated pending seq.
fn rejected_batch() -> Result<Batch, StorageError> {
    let model = ModelId::new("concord-storage-injected-fault")
        .map_err(|e| StorageError::Backend(e.to_string()))?;
    let kind = OperationKind::NumberDelta { delta: 0.0 };
    let operation = DiscreteOperation::new(ElementId::new(0, 0), kind).into();
    let pending = PendingOperation::new(1, operation);
    let operations = vec![pending.clone(), pending];
    Ok(Batch::new().with(Mutation::ReplacePending { model, operations }))
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl OfflineStore for FaultyStore {
    fn key(&self) -> &StoreKey {
        &self.key
    }

    async fn models(&self) -> Result<Vec<ModelSummary>, StorageError> {
        self.live()?.models().await
    }

    async fn unsynced(&self) -> Result<Unsynced, StorageError> {
        self.live()?.unsynced().await
    }

    async fn load_model(&self, model: &ModelId) -> Result<Option<ModelState>, StorageError> {
        self.live()?.load_model(model).await
    }

    async fn load_model_head(&self, model: &ModelId) -> Result<Option<ModelState>, StorageError> {
        self.live()?.load_model_head(model).await
    }

    async fn pending_page(
        &self,
        model: &ModelId,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<PendingOperation>, StorageError> {
        self.live()?.pending_page(model, after, limit).await
    }

    async fn subscriptions(&self) -> Result<BTreeSet<ModelId>, StorageError> {
        self.live()?.subscriptions().await
    }

    async fn replica_id(&self) -> Result<Option<ReplicaId>, StorageError> {
        self.live()?.replica_id().await
    }

    async fn identities(&self) -> Result<IdentityCache, StorageError> {
        self.live()?.identities().await
    }

    async fn commit_group(&self, mut batches: Vec<Batch>) -> Result<(), StorageError> {
        let store = self.live()?;
        let (commit, fault) = self.faults.next_commit();
        match fault {
            None => store.commit_group(batches).await,
            Some(fault @ Fault::InDoubt) => {
                store.commit_group(batches).await?;
                Err(InjectedFault { commit, fault }.into_error())
            }
            Some(fault @ Fault::Clean) => {
                let rejected = batches.len();
                batches.push(rejected_batch()?);
                match store.commit_group(batches).await {
                    Err(StorageError::InvalidBatch { batch, .. }) if batch == rejected => {
                        Err(InjectedFault { commit, fault }.into_error())
                    }
                    Err(other) => Err(other),
                    Ok(()) => Err(StorageError::Backend(format!(
                        "commit {commit}: the store accepted a batch it must reject, so the \
                         commit was applied"
                    ))),
                }
            }
        }
    }
}
