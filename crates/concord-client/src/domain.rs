//! [`Domain`]: one server, one user, one offline store; and [`ModelService`], its models.

use std::sync::Arc;
use std::time::Duration;

use concord_protocol::{
    ActivityChange, ActivityId, Auth, CollectionId, ModelId, Session, UserPresence,
};
use concord_storage::{MemoryAdapter, StorageAdapter};
use concord_sync::{ConnectionState, DomainEvent, EngineConfig};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::activity::ActivityService;
use crate::driver::{AutoCreate, Command, Driver, Reply};
use crate::error::ClientError;
use crate::events::Events;
use crate::history::HistoricalModel;
use crate::model::RealTimeModel;
use crate::presence::PresenceService;

/// How a domain works; [`DomainOptions::default`] keeps its store in memory.
#[derive(Clone)]
pub struct DomainOptions {
    /// Where local changes and downloaded models are kept. Memory loses them with the
    /// process; use a durable adapter (`RedbAdapter`, feature `redb`) to work offline for real.
    pub storage: Arc<dyn StorageAdapter>,
    /// The sync engine's tuning, reconnection, heartbeat and timeouts included.
    pub engine: EngineConfig,
}

impl Default for DomainOptions {
    fn default() -> DomainOptions {
        DomainOptions { storage: Arc::new(MemoryAdapter::new()), engine: EngineConfig::default() }
    }
}

impl std::fmt::Debug for DomainOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainOptions").field("engine", &self.engine).finish_non_exhaustive()
    }
}

/// Builds a [`Domain`].
#[derive(Debug)]
pub struct DomainBuilder {
    url: String,
    fallback: Vec<String>,
    options: DomainOptions,
}

impl DomainBuilder {
    /// More servers serving the same domain (the other nodes of a cluster on one database,
    /// `docs/cluster.md`), tried in order after the first when connecting fails or the
    /// connection breaks. The offline store stays the one named by the first URL. On an
    /// `unavailable` answer naming a listed node as a model's owner, the client reconnects
    /// there (once: a node reached that way is not left for another's redirect).
    pub fn fallback_urls(
        mut self,
        urls: impl IntoIterator<Item = impl Into<String>>,
    ) -> DomainBuilder {
        self.fallback.extend(urls.into_iter().map(Into::into));
        self
    }

    /// The offline store's adapter.
    pub fn storage(mut self, adapter: impl StorageAdapter + 'static) -> DomainBuilder {
        self.options.storage = Arc::new(adapter);
        self
    }

    /// The wait before the first reconnection attempt, and the most it doubles to; each
    /// wait is drawn between half of it and all of it, so that clients dropped together
    /// come back spread out. A model the server failed ([`DomainEvent::ServerFault`]) is
    /// tried again after `first`, doubling with each fault in a row up to 30 times `max`.
    pub fn reconnect_backoff(mut self, first: Duration, max: Duration) -> DomainBuilder {
        self.options.engine.initial_backoff = first;
        self.options.engine.max_backoff = max.max(first);
        self
    }

    /// How long a connection attempt, a request or a submission may wait for its answer
    /// before the connection counts as broken.
    pub fn request_timeout(mut self, timeout: Duration) -> DomainBuilder {
        self.options.engine.request_timeout = timeout;
        self
    }

    /// How often the client pings; three silent intervals count as a lost connection.
    pub fn heartbeat(mut self, interval: Duration) -> DomainBuilder {
        self.options.engine.heartbeat = interval;
        self.options.engine.silence_timeout = interval * 3;
        self
    }

    /// The whole engine configuration (replaces what the other setters set).
    pub fn engine(mut self, config: EngineConfig) -> DomainBuilder {
        self.options.engine = config;
        self
    }

    /// Starts the domain's task (natively on the current tokio runtime; in a browser on the
    /// page's event loop). Nothing connects yet.
    pub fn build(self) -> Domain {
        let (commands, receiver) = mpsc::channel(256);
        let (state, state_receiver) = watch::channel(ConnectionState::Disconnected);
        let (events, _) = broadcast::channel(1024);
        let (presence, _) = broadcast::channel(1024);
        let (activities, _) = broadcast::channel(1024);
        let channels = (events.clone(), presence.clone(), activities.clone());
        let urls = std::iter::once(self.url.clone()).chain(self.fallback).collect();
        let driver = Driver::new(urls, self.options, state, channels);
        crate::rt::spawn(driver.run(receiver));
        let inner =
            Inner { url: self.url, commands, state: state_receiver, events, presence, activities };
        Domain { inner: Arc::new(inner) }
    }
}

/// A model in the offline store, as [`ModelService::stored_models`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredModel {
    pub id: ModelId,
    pub collection: CollectionId,
    /// Its data is here: it can be opened offline.
    pub available: bool,
    pub subscribed: bool,
    pub has_pending_changes: bool,
    pub created_locally: bool,
    pub deleted_locally: bool,
    /// The server version the store holds.
    pub version: Option<u64>,
}

#[derive(Debug)]
struct Inner {
    url: String,
    commands: mpsc::Sender<Command>,
    state: watch::Receiver<ConnectionState>,
    events: broadcast::Sender<DomainEvent>,
    presence: broadcast::Sender<UserPresence>,
    activities: broadcast::Sender<(ActivityId, ActivityChange)>,
}

/// One server (URL), one user and their offline store. Cheap to clone; the domain's task
/// stops when the last clone (and every model handle) is dropped.
#[derive(Debug, Clone)]
pub struct Domain {
    inner: Arc<Inner>,
}

impl Domain {
    /// `url` is the server's WebSocket endpoint, `ws://HOST:PORT/<namespace>/<domain>`.
    pub fn builder(url: impl Into<String>) -> DomainBuilder {
        DomainBuilder { url: url.into(), fallback: Vec::new(), options: DomainOptions::default() }
    }

    /// The first server's URL (the one naming the offline store).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    pub(crate) async fn call<T>(
        &self,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.inner.commands.send(command(reply)).await.map_err(|_| ClientError::Closed)?;
        answer.await.map_err(|_| ClientError::Closed)?
    }

    pub(crate) fn send_now(&self, command: Command) {
        let _ = self.inner.commands.try_send(command);
    }

    pub(crate) async fn send(&self, command: Command) -> Result<(), ClientError> {
        self.inner.commands.send(command).await.map_err(|_| ClientError::Closed)
    }

    /// Connects with a JWT; the user is its `sub`. Opens that user's offline store. Once
    /// connected, a lost connection is retried with backoff until [`Domain::disconnect`].
    pub async fn connect_with_jwt(&self, jwt: impl Into<String>) -> Result<Session, ClientError> {
        let auth = Auth::Jwt(jwt.into());
        self.call(|reply| Command::Connect { auth, reply }).await
    }

    /// Connects as an anonymous user, if the server allows it.
    pub async fn connect_anonymously(
        &self,
        display_name: Option<String>,
    ) -> Result<Session, ClientError> {
        let auth = Auth::Anonymous { display_name };
        self.call(|reply| Command::Connect { auth, reply }).await
    }

    /// Opens `username`'s offline store without connecting: models in the store can be
    /// opened, created, edited and removed; everything syncs once connected.
    pub async fn initialize_offline(&self, username: impl Into<String>) -> Result<(), ClientError> {
        let user = username.into();
        self.call(|reply| Command::InitializeOffline { user, reply }).await
    }

    /// Closes the connection and stops reconnecting; work continues offline.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.call(|reply| Command::Disconnect { reply }).await
    }

    /// Stops the domain: closes the connection, writes what is queued for the store and
    /// closes it (so another domain may open it). Every handle of this domain stops
    /// working.
    pub async fn close(&self) -> Result<(), ClientError> {
        let (reply, done) = oneshot::channel();
        self.send(Command::Shutdown { reply }).await?;
        done.await.map_err(|_| ClientError::Closed)
    }

    pub fn state(&self) -> ConnectionState {
        self.inner.state.borrow().clone()
    }

    /// Waits until the connection state is `state` (or the domain closes).
    pub async fn wait_for(&self, state: ConnectionState) -> Result<(), ClientError> {
        let mut watch = self.inner.state.clone();
        watch.wait_for(|s| *s == state).await.map(|_| ()).map_err(|_| ClientError::Closed)
    }

    /// Domain events from now on.
    pub fn events(&self) -> Events<DomainEvent> {
        Events::new(self.inner.events.subscribe())
    }

    /// Presence changes of the users followed with [`PresenceService::follow`] from now on.
    pub(crate) fn presence_events(&self) -> Events<UserPresence> {
        Events::new(self.inner.presence.subscribe())
    }

    pub(crate) fn activity_events(&self) -> Events<(ActivityId, ActivityChange)> {
        Events::new(self.inner.activities.subscribe())
    }

    /// Activities: join, leave, this session's state in them.
    pub fn activities(&self) -> ActivityService {
        ActivityService { domain: self.clone() }
    }

    /// Identities: users' display names and emails, by id or name prefix.
    pub fn identity(&self) -> crate::IdentityService {
        crate::IdentityService { domain: self.clone() }
    }

    /// Presence: this user's published state, and the users this domain follows.
    pub fn presence(&self) -> PresenceService {
        PresenceService { domain: self.clone() }
    }

    pub fn models(&self) -> ModelService {
        ModelService { domain: self.clone() }
    }
}

/// The models of a domain.
#[derive(Debug, Clone)]
pub struct ModelService {
    pub(crate) domain: Domain,
}

impl ModelService {
    /// The history of a model, read-only, at its newest version: play it back and forth.
    /// Needs the connection and read permission on the model (otherwise
    /// `model_not_found`, as for a model that does not exist).
    pub async fn history(&self, id: &ModelId) -> Result<HistoricalModel, ClientError> {
        HistoricalModel::open(self.domain.clone(), id).await
    }

    /// Opens a model: from memory or the offline store if it is there (online or not),
    /// else from the server. Offline, a model never downloaded fails with
    /// [`ClientError::NotAvailableOffline`].
    pub async fn open(&self, id: &ModelId) -> Result<RealTimeModel, ClientError> {
        self.open_with(id, None).await
    }

    /// Opens a model, creating it in `collection` with `data` if the server has none.
    pub async fn open_auto_create(
        &self,
        id: &ModelId,
        collection: &CollectionId,
        data: serde_json::Value,
    ) -> Result<RealTimeModel, ClientError> {
        let auto = AutoCreate { collection: collection.clone(), data };
        self.open_with(id, Some(auto)).await
    }

    async fn open_with(
        &self,
        id: &ModelId,
        auto_create: Option<AutoCreate>,
    ) -> Result<RealTimeModel, ClientError> {
        let model = id.clone();
        let opened = self.domain.call(|reply| Command::Open { model, auto_create, reply }).await?;
        Ok(RealTimeModel::new(self.domain.clone(), id.clone(), opened))
    }

    /// Creates a model with a fresh id (UUID v7), here and — now or once connected — at
    /// the server. Works offline.
    pub async fn create(
        &self,
        collection: &CollectionId,
        data: serde_json::Value,
    ) -> Result<ModelId, ClientError> {
        let id = ModelId::new(uuid::Uuid::now_v7().to_string())
            .map_err(|e| ClientError::InvalidValue(e.to_string()))?;
        self.create_with_id(&id, collection, data).await?;
        Ok(id)
    }

    /// Creates a model under an id the application chose.
    pub async fn create_with_id(
        &self,
        id: &ModelId,
        collection: &CollectionId,
        data: serde_json::Value,
    ) -> Result<(), ClientError> {
        let (model, collection) = (id.clone(), collection.clone());
        self.domain.call(|reply| Command::Create { model, collection, data, reply }).await
    }

    /// Deletes a model: at once here (a tombstone in the store), at the server when
    /// connected. Works offline for models the store holds.
    pub async fn remove(&self, id: &ModelId) -> Result<(), ClientError> {
        let model = id.clone();
        self.domain.call(|reply| Command::Remove { model, reply }).await
    }

    /// Keeps these models in the offline store and current while connected.
    pub async fn subscribe_offline(&self, ids: &[ModelId]) -> Result<(), ClientError> {
        let models = ids.to_vec();
        self.domain.call(|reply| Command::Subscribe { models, reply }).await
    }

    pub async fn unsubscribe_offline(&self, ids: &[ModelId]) -> Result<(), ClientError> {
        let models = ids.to_vec();
        self.domain.call(|reply| Command::Unsubscribe { models, reply }).await
    }

    pub async fn offline_subscriptions(&self) -> Result<Vec<ModelId>, ClientError> {
        self.domain.call(|reply| Command::Subscriptions { reply }).await
    }

    /// Every model in the offline store, with what it holds.
    pub async fn stored_models(&self) -> Result<Vec<StoredModel>, ClientError> {
        self.domain.call(|reply| Command::StoredModels { reply }).await
    }
}
