//! `concord-web` is Concord's JavaScript API for browsers: a wasm-bindgen layer over
//! `concord-client`, in the shape of the Convergence engine's JavaScript API —
//! `new Domain(url, { offline: { storage: new IdbStorageAdapter() } })`,
//! `domain.initializeOffline(user)`, `domain.connectWithJwt(token)`,
//! `domain.models().open(id)`, element handles and event subscriptions. String positions at
//! this boundary are UTF-16 code units, as JavaScript counts them; they are converted to the
//! model's `char` positions against the current text.
//!
//! Models (`model.rs`), elements and batches (`element.rs`), collaborators and references
//! (`collaboration.rs`), history (`history.rs`), queries (`query.rs`), permissions, presence and
//! activities (`presence.rs`), identities (`identity.rs`) keep the Rust API's names. Errors are
//! JS `Error`s with a stable `code`
//! (`error.rs`); events are plain objects with a `type` (`events.rs`); subscriptions return
//! an unsubscribe function (`subscription.rs`); the TypeScript types of everything passed as
//! plain JS are in `types.rs`.
//!
//! It holds no logic of its own beyond that translation: syncing, storage and offline work
//! are `concord-client`'s. On targets other than wasm32 the crate is empty. `docs/web.md` is
//! the guide.

#![cfg(target_arch = "wasm32")]

mod collaboration;
mod element;
mod error;
mod events;
mod history;
mod identity;
mod model;
mod presence;
mod query;
mod subscription;
mod types;

pub use collaboration::LocalReference;
pub use element::RealTimeElement;
pub use error::WebError;
pub use history::HistoricalModel;
pub use model::RealTimeModel;

use concord_client::{
    ClientError, CollectionId, ConnectionState, Domain as ClientDomain, ModelId, PathSegment,
};
use std::time::Duration;

use serde::Serialize;
use wasm_bindgen::prelude::*;

fn error(error: ClientError) -> WebError {
    WebError::from(error)
}

fn id(model: &str) -> Result<ModelId, WebError> {
    ModelId::new(model).map_err(|e| WebError::invalid(e.to_string()))
}

fn collection(collection: &str) -> Result<CollectionId, WebError> {
    CollectionId::new(collection).map_err(|e| WebError::invalid(e.to_string()))
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, WebError> {
    let serializer = serde_wasm_bindgen::Serializer::json_compatible();
    value.serialize(&serializer).map_err(|e| WebError::invalid(e.to_string()))
}

fn from_js(value: JsValue) -> Result<serde_json::Value, WebError> {
    serde_wasm_bindgen::from_value(value).map_err(|e| WebError::invalid(e.to_string()))
}

/// A path of keys (strings) and indices (numbers).
fn path_of(path: Vec<JsValue>) -> Result<Vec<PathSegment>, WebError> {
    path.into_iter()
        .map(|segment| match (segment.as_string(), segment.as_f64()) {
            (Some(key), _) => Ok(PathSegment::Key(key)),
            (None, Some(index)) if index >= 0.0 => Ok(PathSegment::Index(index as usize)),
            _ => Err(WebError::invalid("a path holds keys (strings) and indices (numbers)")),
        })
        .collect()
}

/// A count or index from JavaScript: a whole number, not negative.
fn index(value: f64, what: &str) -> Result<usize, WebError> {
    if value >= 0.0 && value.fract() == 0.0 && value <= u32::MAX as f64 {
        Ok(value as usize)
    } else {
        Err(WebError::invalid(format!("{what} must be a whole number ≥ 0, not {value}")))
    }
}

/// `object[key]`, unless it is missing, `undefined` or `null`.
fn option(object: &JsValue, key: &str) -> Option<JsValue> {
    if !object.is_object() {
        return None;
    }
    js_sys::Reflect::get(object, &key.into()).ok().filter(|v| !v.is_undefined() && !v.is_null())
}

/// `object[key]` as a duration: a positive number of milliseconds.
fn milliseconds(object: &JsValue, key: &str) -> Result<Option<Duration>, WebError> {
    let Some(value) = option(object, key) else { return Ok(None) };
    match value.as_f64() {
        Some(ms) if ms.is_finite() && ms > 0.0 => Ok(Some(Duration::from_secs_f64(ms / 1000.0))),
        _ => Err(WebError::invalid(format!("{key} is a positive number of milliseconds"))),
    }
}

/// The offline store in the browser's IndexedDB: one database per (server, user).
#[wasm_bindgen]
#[derive(Debug, Default)]
pub struct IdbStorageAdapter {
    _private: (),
}

#[wasm_bindgen]
impl IdbStorageAdapter {
    #[wasm_bindgen(constructor)]
    pub fn new() -> IdbStorageAdapter {
        IdbStorageAdapter::default()
    }
}

/// One server, one user, one offline store.
#[wasm_bindgen]
#[derive(Debug, Clone)]
pub struct Domain {
    inner: ClientDomain,
}

fn session_js(session: concord_client::Session) -> Result<JsValue, WebError> {
    to_js(&serde_json::json!({ "session": session.session.0, "user": session.user.id.0 }))
}

#[wasm_bindgen]
impl Domain {
    /// `options.offline.storage`: an `IdbStorageAdapter` keeps the offline store in
    /// IndexedDB; without it the store lives in memory and dies with the page.
    /// `options.fallbackUrls`: more nodes serving the domain, tried in turn after `url`
    /// (`DomainBuilder::fallback_urls`). `options.heartbeatMs`, `options.requestTimeoutMs`
    /// and `options.reconnectBackoff` (`{ firstMs, maxMs }`) are the builder's `heartbeat`,
    /// `request_timeout` and `reconnect_backoff`; a value that is not a positive number of
    /// milliseconds throws `invalid_argument`.
    #[wasm_bindgen(constructor)]
    pub fn new(
        url: &str,
        #[wasm_bindgen(unchecked_param_type = "DomainOptions")] options: JsValue,
    ) -> Result<Domain, WebError> {
        let storage = option(&options, "offline").and_then(|offline| option(&offline, "storage"));
        let fallback: Vec<String> = js_sys::Reflect::get(&options, &"fallbackUrls".into())
            .ok()
            .filter(js_sys::Array::is_array)
            .map(|urls| js_sys::Array::from(&urls).iter().filter_map(|u| u.as_string()).collect())
            .unwrap_or_default();
        let mut builder = ClientDomain::builder(url).fallback_urls(fallback);
        if storage.is_some() {
            builder = builder.storage(concord_storage::IdbAdapter::new());
        }
        if let Some(interval) = milliseconds(&options, "heartbeatMs")? {
            builder = builder.heartbeat(interval);
        }
        if let Some(timeout) = milliseconds(&options, "requestTimeoutMs")? {
            builder = builder.request_timeout(timeout);
        }
        if let Some(backoff) = option(&options, "reconnectBackoff") {
            let first = milliseconds(&backoff, "firstMs")?;
            let max = milliseconds(&backoff, "maxMs")?;
            let (Some(first), Some(max)) = (first, max) else {
                return Err(WebError::invalid("reconnectBackoff is { firstMs, maxMs }"));
            };
            builder = builder.reconnect_backoff(first, max);
        }
        Ok(Domain { inner: builder.build() })
    }

    pub fn url(&self) -> String {
        self.inner.url().to_owned()
    }

    #[wasm_bindgen(js_name = initializeOffline)]
    pub async fn initialize_offline(&self, username: String) -> Result<(), WebError> {
        self.inner.initialize_offline(username).await.map_err(error)
    }

    /// Resolves to the session: `{ session, user }`.
    #[wasm_bindgen(js_name = connectWithJwt, unchecked_return_type = "SessionInfo")]
    pub async fn connect_with_jwt(&self, jwt: String) -> Result<JsValue, WebError> {
        session_js(self.inner.connect_with_jwt(jwt).await.map_err(error)?)
    }

    #[wasm_bindgen(js_name = connectAnonymously, unchecked_return_type = "SessionInfo")]
    pub async fn connect_anonymously(
        &self,
        display_name: Option<String>,
    ) -> Result<JsValue, WebError> {
        session_js(self.inner.connect_anonymously(display_name).await.map_err(error)?)
    }

    pub async fn disconnect(&self) -> Result<(), WebError> {
        self.inner.disconnect().await.map_err(error)
    }

    /// Disconnects and stops the domain: its store is closed (and its lock released) and
    /// every handle of it fails with `closed` from then on.
    pub async fn close(&self) -> Result<(), WebError> {
        self.inner.close().await.map_err(error)
    }

    #[wasm_bindgen(unchecked_return_type = "ConnectionState")]
    pub fn state(&self) -> String {
        events::state_name(&self.inner.state()).to_owned()
    }

    /// Resolves once the connection is in `state`.
    #[wasm_bindgen(js_name = waitFor)]
    pub async fn wait_for(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ConnectionState")] state: String,
    ) -> Result<(), WebError> {
        let state = match state.as_str() {
            "disconnected" => ConnectionState::Disconnected,
            "connecting" => ConnectionState::Connecting,
            "connected" => ConnectionState::Connected,
            "reconnecting" => ConnectionState::Reconnecting,
            other => return Err(WebError::invalid(format!("no connection state {other:?}"))),
        };
        self.inner.wait_for(state).await.map_err(error)
    }

    pub fn models(&self) -> ModelService {
        ModelService { domain: self.inner.clone() }
    }

    /// Calls `callback(event)` for each domain event (every kind in `docs/web.md`); returns
    /// the function that ends the subscription.
    #[wasm_bindgen(js_name = onEvent, unchecked_return_type = "Unsubscribe")]
    pub fn on_event(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(event: DomainEvent) => void")]
        callback: js_sys::Function,
    ) -> js_sys::Function {
        let events = subscription::converted(self.inner.events(), |event| async move {
            to_js(&events::domain_event(event)).ok()
        });
        subscription::subscribe(events, callback)
    }
}

/// The models of a domain.
#[wasm_bindgen]
#[derive(Debug)]
pub struct ModelService {
    domain: ClientDomain,
}

#[wasm_bindgen]
impl ModelService {
    pub async fn open(&self, model: String) -> Result<RealTimeModel, WebError> {
        let inner = self.domain.models().open(&id(&model)?).await.map_err(error)?;
        Ok(RealTimeModel::new(inner))
    }

    #[wasm_bindgen(js_name = openAutoCreate)]
    pub async fn open_auto_create(
        &self,
        model: String,
        collection_id: String,
        #[wasm_bindgen(unchecked_param_type = "JsonObject")] data: JsValue,
    ) -> Result<RealTimeModel, WebError> {
        let data = from_js(data)?;
        let models = self.domain.models();
        let inner = models
            .open_auto_create(&id(&model)?, &collection(&collection_id)?, data)
            .await
            .map_err(error)?;
        Ok(RealTimeModel::new(inner))
    }

    /// Creates a model (works offline); resolves to its id.
    pub async fn create(
        &self,
        collection_id: String,
        #[wasm_bindgen(unchecked_param_type = "JsonObject")] data: JsValue,
    ) -> Result<String, WebError> {
        let data = from_js(data)?;
        let id =
            self.domain.models().create(&collection(&collection_id)?, data).await.map_err(error)?;
        Ok(id.into_string())
    }

    /// Creates a model with the id given (works offline).
    #[wasm_bindgen(js_name = createWithId)]
    pub async fn create_with_id(
        &self,
        model: String,
        collection_id: String,
        #[wasm_bindgen(unchecked_param_type = "JsonObject")] data: JsValue,
    ) -> Result<(), WebError> {
        let data = from_js(data)?;
        let models = self.domain.models();
        models.create_with_id(&id(&model)?, &collection(&collection_id)?, data).await.map_err(error)
    }

    /// The model's history, read-only, at its newest version (needs the connection and
    /// read permission).
    pub async fn history(&self, model: String) -> Result<HistoricalModel, WebError> {
        let inner = self.domain.models().history(&id(&model)?).await.map_err(error)?;
        Ok(HistoricalModel::new(inner))
    }

    pub async fn remove(&self, model: String) -> Result<(), WebError> {
        self.domain.models().remove(&id(&model)?).await.map_err(error)
    }

    #[wasm_bindgen(js_name = subscribeOffline)]
    pub async fn subscribe_offline(&self, models: Vec<String>) -> Result<(), WebError> {
        let ids = models.iter().map(|m| id(m)).collect::<Result<Vec<_>, _>>()?;
        self.domain.models().subscribe_offline(&ids).await.map_err(error)
    }

    #[wasm_bindgen(js_name = unsubscribeOffline)]
    pub async fn unsubscribe_offline(&self, models: Vec<String>) -> Result<(), WebError> {
        let ids = models.iter().map(|m| id(m)).collect::<Result<Vec<_>, _>>()?;
        self.domain.models().unsubscribe_offline(&ids).await.map_err(error)
    }

    #[wasm_bindgen(js_name = offlineSubscriptions)]
    pub async fn offline_subscriptions(&self) -> Result<Vec<String>, WebError> {
        let ids = self.domain.models().offline_subscriptions().await.map_err(error)?;
        Ok(ids.into_iter().map(ModelId::into_string).collect())
    }

    /// Every model in the offline store.
    #[wasm_bindgen(js_name = storedModels, unchecked_return_type = "StoredModel[]")]
    pub async fn stored_models(&self) -> Result<JsValue, WebError> {
        let models = self.domain.models().stored_models().await.map_err(error)?;
        let list: Vec<serde_json::Value> = models
            .into_iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id.as_str(), "collection": m.collection.as_str(),
                    "available": m.available, "subscribed": m.subscribed,
                    "hasPendingChanges": m.has_pending_changes,
                    "createdLocally": m.created_locally, "deletedLocally": m.deleted_locally,
                    "version": m.version,
                })
            })
            .collect();
        to_js(&list)
    }
}
