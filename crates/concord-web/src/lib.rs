//! `concord-web` is Concord's JavaScript API for browsers: a wasm-bindgen layer over
//! `concord-client`, in the shape of the Convergence engine's JavaScript API —
//! `new Domain(url, { offline: { storage: new IdbStorageAdapter() } })`,
//! `domain.initializeOffline(user)`, `domain.connectWithJwt(token)`,
//! `domain.models().open(id)`, element handles and event callbacks. String positions at this
//! boundary are UTF-16 code units, as JavaScript counts them; they are converted to the
//! model's `char` positions against the current text.
//!
//! Collaborators and references (`collaboration.rs`), and permissions, presence and
//! activities (`presence.rs`), keep the Rust API's names.
//!
//! It holds no logic of its own beyond that translation: syncing, storage and offline work
//! are `concord-client`'s. On targets other than wasm32 the crate is empty. `docs/web.md` is
//! the guide.

#![cfg(target_arch = "wasm32")]

mod collaboration;
mod events;
mod history;
mod presence;

pub use collaboration::LocalReference;
pub use history::HistoricalModel;

use concord_client::{
    ClientError, CollectionId, Domain as ClientDomain, Edit, Element, Kind, ModelId, PathSegment,
    RealTimeModel as ClientModel,
};
use serde::Serialize;
use wasm_bindgen::prelude::*;

fn error(error: ClientError) -> JsError {
    JsError::new(&error.to_string())
}

fn id(model: &str) -> Result<ModelId, JsError> {
    ModelId::new(model).map_err(|e| JsError::new(&e.to_string()))
}

fn collection(collection: &str) -> Result<CollectionId, JsError> {
    CollectionId::new(collection).map_err(|e| JsError::new(&e.to_string()))
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsError> {
    let serializer = serde_wasm_bindgen::Serializer::json_compatible();
    value.serialize(&serializer).map_err(|e| JsError::new(&e.to_string()))
}

fn from_js(value: JsValue) -> Result<serde_json::Value, JsError> {
    serde_wasm_bindgen::from_value(value).map_err(|e| JsError::new(&e.to_string()))
}

/// A path of keys (strings) and indices (numbers).
fn path_of(path: Vec<JsValue>) -> Result<Vec<PathSegment>, JsError> {
    path.into_iter()
        .map(|segment| match (segment.as_string(), segment.as_f64()) {
            (Some(key), _) => Ok(PathSegment::Key(key)),
            (None, Some(index)) if index >= 0.0 => Ok(PathSegment::Index(index as usize)),
            _ => Err(JsError::new("a path holds keys (strings) and indices (numbers)")),
        })
        .collect()
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

#[wasm_bindgen]
impl Domain {
    /// `options.offline.storage`: an `IdbStorageAdapter` keeps the offline store in
    /// IndexedDB; without it the store lives in memory and dies with the page.
    #[wasm_bindgen(constructor)]
    pub fn new(url: &str, options: JsValue) -> Domain {
        let storage = js_sys::Reflect::get(&options, &"offline".into())
            .ok()
            .filter(|v| !v.is_undefined() && !v.is_null())
            .and_then(|offline| js_sys::Reflect::get(&offline, &"storage".into()).ok())
            .filter(|v| !v.is_undefined() && !v.is_null());
        let builder = ClientDomain::builder(url);
        let builder = match storage {
            Some(_) => builder.storage(concord_storage::IdbAdapter::new()),
            None => builder,
        };
        Domain { inner: builder.build() }
    }

    #[wasm_bindgen(js_name = initializeOffline)]
    pub async fn initialize_offline(&self, username: String) -> Result<(), JsError> {
        self.inner.initialize_offline(username).await.map_err(error)
    }

    /// Resolves to the session: `{ session, user: { id, displayName }, ... }`.
    #[wasm_bindgen(js_name = connectWithJwt)]
    pub async fn connect_with_jwt(&self, jwt: String) -> Result<JsValue, JsError> {
        let session = self.inner.connect_with_jwt(jwt).await.map_err(error)?;
        to_js(&serde_json::json!({ "session": session.session.0, "user": session.user.id.0 }))
    }

    #[wasm_bindgen(js_name = connectAnonymously)]
    pub async fn connect_anonymously(
        &self,
        display_name: Option<String>,
    ) -> Result<JsValue, JsError> {
        let session = self.inner.connect_anonymously(display_name).await.map_err(error)?;
        to_js(&serde_json::json!({ "session": session.session.0, "user": session.user.id.0 }))
    }

    pub async fn disconnect(&self) -> Result<(), JsError> {
        self.inner.disconnect().await.map_err(error)
    }

    /// `"disconnected"`, `"connecting"`, `"connected"` or `"reconnecting"`.
    pub fn state(&self) -> String {
        events::state_name(&self.inner.state()).to_owned()
    }

    pub fn models(&self) -> ModelService {
        ModelService { domain: self.inner.clone() }
    }

    /// Calls `callback(event)` for each domain event: `{ type: "state", state }`,
    /// `{ type: "syncProgress", done, failed, total }`, `{ type: "created" | "deleted" | ..., model }`
    /// — every kind is listed in `docs/web.md`.
    #[wasm_bindgen(js_name = onEvent)]
    pub fn on_event(&self, callback: js_sys::Function) {
        let mut stream = self.inner.events();
        wasm_bindgen_futures::spawn_local(async move {
            while let Some(event) = stream.next().await {
                if let Ok(value) = to_js(&events::domain_event(event)) {
                    let _ = callback.call1(&JsValue::NULL, &value);
                }
            }
        });
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
    pub async fn open(&self, model: String) -> Result<RealTimeModel, JsError> {
        let inner = self.domain.models().open(&id(&model)?).await.map_err(error)?;
        Ok(RealTimeModel { inner })
    }

    #[wasm_bindgen(js_name = openAutoCreate)]
    pub async fn open_auto_create(
        &self,
        model: String,
        collection_id: String,
        data: JsValue,
    ) -> Result<RealTimeModel, JsError> {
        let data = from_js(data)?;
        let models = self.domain.models();
        let inner = models
            .open_auto_create(&id(&model)?, &collection(&collection_id)?, data)
            .await
            .map_err(error)?;
        Ok(RealTimeModel { inner })
    }

    /// Creates a model (works offline); resolves to its id.
    pub async fn create(&self, collection_id: String, data: JsValue) -> Result<String, JsError> {
        let data = from_js(data)?;
        let id =
            self.domain.models().create(&collection(&collection_id)?, data).await.map_err(error)?;
        Ok(id.into_string())
    }

    /// The model's history, read-only, at its newest version (needs the connection and
    /// read permission).
    pub async fn history(&self, model: String) -> Result<HistoricalModel, JsError> {
        let inner = self.domain.models().history(&id(&model)?).await.map_err(error)?;
        Ok(HistoricalModel::new(inner))
    }

    pub async fn remove(&self, model: String) -> Result<(), JsError> {
        self.domain.models().remove(&id(&model)?).await.map_err(error)
    }

    #[wasm_bindgen(js_name = subscribeOffline)]
    pub async fn subscribe_offline(&self, models: Vec<String>) -> Result<(), JsError> {
        let ids = models.iter().map(|m| id(m)).collect::<Result<Vec<_>, _>>()?;
        self.domain.models().subscribe_offline(&ids).await.map_err(error)
    }

    #[wasm_bindgen(js_name = unsubscribeOffline)]
    pub async fn unsubscribe_offline(&self, models: Vec<String>) -> Result<(), JsError> {
        let ids = models.iter().map(|m| id(m)).collect::<Result<Vec<_>, _>>()?;
        self.domain.models().unsubscribe_offline(&ids).await.map_err(error)
    }

    #[wasm_bindgen(js_name = offlineSubscriptions)]
    pub async fn offline_subscriptions(&self) -> Result<Vec<String>, JsError> {
        let ids = self.domain.models().offline_subscriptions().await.map_err(error)?;
        Ok(ids.into_iter().map(ModelId::into_string).collect())
    }

    /// `[{ id, collection, available, subscribed, hasPendingChanges, createdLocally,
    /// deletedLocally, version }]`.
    #[wasm_bindgen(js_name = storedModels)]
    pub async fn stored_models(&self) -> Result<JsValue, JsError> {
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

/// An open model.
#[wasm_bindgen]
#[derive(Debug, Clone)]
pub struct RealTimeModel {
    inner: ClientModel,
}

#[wasm_bindgen]
impl RealTimeModel {
    pub fn id(&self) -> String {
        self.inner.id().as_str().to_owned()
    }

    pub fn collection(&self) -> String {
        self.inner.collection().as_str().to_owned()
    }

    /// The local view as a plain JS value.
    pub async fn value(&self) -> Result<JsValue, JsError> {
        to_js(&self.inner.value().await.map_err(error)?)
    }

    pub async fn version(&self) -> Result<f64, JsError> {
        Ok(self.inner.version().await.map_err(error)? as f64)
    }

    pub fn root(&self) -> RealTimeElement {
        RealTimeElement { inner: self.inner.root().element().clone() }
    }

    /// The element at `path` (keys and indices), or `undefined`.
    #[wasm_bindgen(js_name = elementAt)]
    pub async fn element_at(&self, path: Vec<JsValue>) -> Result<Option<RealTimeElement>, JsError> {
        let path = path_of(path)?;
        let element = self.inner.element_at(&path).await.map_err(error)?;
        Ok(element.map(|inner| RealTimeElement { inner }))
    }

    /// `{ last, stored, acknowledged }`: how far local changes got.
    pub fn watermarks(&self) -> Result<JsValue, JsError> {
        let w = self.inner.watermarks();
        to_js(
            &serde_json::json!({ "last": w.last, "stored": w.stored, "acknowledged": w.acknowledged }),
        )
    }

    /// Resolves once the server acknowledged local change `seq` (a watermark value).
    pub async fn acknowledged(&self, seq: f64) -> Result<(), JsError> {
        self.inner.acknowledged(concord_client::Change { seq: seq as u64 }).await.map_err(error)
    }

    /// Calls `callback(event)` for each model event: `{ type: "changed", element, local,
    /// author }`, `{ type: "committed" }`, `{ type: "online" | "offline" }`, ... — every
    /// kind is listed in `docs/web.md`.
    #[wasm_bindgen(js_name = onEvent)]
    pub fn on_event(&self, callback: js_sys::Function) {
        let mut stream = self.inner.events();
        wasm_bindgen_futures::spawn_local(async move {
            while let Some(event) = stream.next().await {
                if let Ok(value) = to_js(&events::model_event(event)) {
                    let _ = callback.call1(&JsValue::NULL, &value);
                }
            }
        });
    }

    pub fn close(self) {}
}

/// An element of a model; its methods depend on its kind (`kind()`).
#[wasm_bindgen]
#[derive(Debug, Clone)]
pub struct RealTimeElement {
    inner: Element,
}

/// The `char` index of UTF-16 position `utf16` in `text` (clamped to its end).
fn char_index(text: &str, utf16: usize) -> usize {
    let mut units = 0;
    for (chars, c) in text.chars().enumerate() {
        if units >= utf16 {
            return chars;
        }
        units += c.len_utf16();
    }
    text.chars().count()
}

#[wasm_bindgen]
impl RealTimeElement {
    /// `"object"`, `"array"`, `"string"`, `"number"`, `"boolean"`, `"date"` or `"null"`.
    pub fn kind(&self) -> String {
        self.inner.kind().to_string()
    }

    pub async fn value(&self) -> Result<JsValue, JsError> {
        to_js(&self.inner.json().await.map_err(error)?)
    }

    /// A child: by key (objects) or index (arrays).
    pub async fn get(&self, key: JsValue) -> Result<Option<RealTimeElement>, JsError> {
        let child = match (self.inner.kind(), key.as_string(), key.as_f64()) {
            (Kind::Object, Some(key), _) => self.inner.as_object().map_err(error)?.get(&key).await,
            (Kind::Array, _, Some(index)) => {
                self.inner.as_array().map_err(error)?.get(index as usize).await
            }
            _ => return Err(JsError::new("get takes a key on objects and an index on arrays")),
        };
        Ok(child.map_err(error)?.map(|inner| RealTimeElement { inner }))
    }

    /// Objects: sets `key` to `value`. Returns the change's seq.
    pub async fn set(&self, key: String, value: JsValue) -> Result<f64, JsError> {
        let value = from_js(value)?;
        let change =
            self.inner.as_object().map_err(error)?.set(&key, value).await.map_err(error)?;
        Ok(change.seq as f64)
    }

    /// Objects: removes `key`. Arrays: removes the item at the index.
    pub async fn remove(&self, key: JsValue) -> Result<f64, JsError> {
        let change = match (self.inner.kind(), key.as_string(), key.as_f64()) {
            (Kind::Object, Some(key), _) => {
                self.inner.as_object().map_err(error)?.remove(&key).await
            }
            (Kind::Array, _, Some(index)) => {
                self.inner.as_array().map_err(error)?.remove(index as usize).await
            }
            _ => return Err(JsError::new("remove takes a key on objects and an index on arrays")),
        };
        Ok(change.map_err(error)?.seq as f64)
    }

    /// Arrays: appends `value`.
    pub async fn push(&self, value: JsValue) -> Result<f64, JsError> {
        let value = from_js(value)?;
        let change = self.inner.as_array().map_err(error)?.push(value).await.map_err(error)?;
        Ok(change.seq as f64)
    }

    /// Arrays: inserts `value` at `index`.
    pub async fn insert(&self, index: usize, value: JsValue) -> Result<f64, JsError> {
        let value = from_js(value)?;
        let array = self.inner.as_array().map_err(error)?;
        Ok(array.insert(index, value).await.map_err(error)?.seq as f64)
    }

    /// Strings: deletes `deleteCount` and inserts `text` at `index` (UTF-16 code units).
    pub async fn splice(
        &self,
        index: usize,
        delete_count: usize,
        text: String,
    ) -> Result<f64, JsError> {
        self.inner.as_string().map_err(error)?;
        let element = self.inner.clone();
        let model = self.inner.model().clone();
        let change = model
            .batch(move |batch| {
                let current =
                    batch.document().text(element.id()).ok_or(ClientError::NoSuchElement)?;
                let start = char_index(&current, index);
                let end = char_index(&current, index + delete_count);
                let edit = Edit::StringSplice { index: start, delete: end - start, insert: text };
                batch.change(&element, edit)
            })
            .await
            .map_err(error)?;
        Ok(change.seq as f64)
    }

    /// Strings: the text's length in UTF-16 code units.
    #[wasm_bindgen(js_name = length)]
    pub async fn length(&self) -> Result<usize, JsError> {
        let text = self.inner.as_string().map_err(error)?.value().await.map_err(error)?;
        Ok(text.encode_utf16().count())
    }

    /// Numbers: adds `delta`.
    pub async fn add(&self, delta: f64) -> Result<f64, JsError> {
        let number = self.inner.as_number().map_err(error)?;
        Ok(number.add(delta).await.map_err(error)?.seq as f64)
    }

    /// Numbers, booleans, strings and dates (milliseconds): replaces the value.
    #[wasm_bindgen(js_name = setValue)]
    pub async fn set_value(&self, value: JsValue) -> Result<f64, JsError> {
        let change = match self.inner.kind() {
            Kind::Number => {
                let value = value.as_f64().ok_or_else(|| JsError::new("a number"))?;
                self.inner.as_number().map_err(error)?.set(value).await
            }
            Kind::Boolean => {
                let value = value.as_bool().ok_or_else(|| JsError::new("a boolean"))?;
                self.inner.as_boolean().map_err(error)?.set(value).await
            }
            Kind::String => {
                let value = value.as_string().ok_or_else(|| JsError::new("a string"))?;
                self.inner.as_string().map_err(error)?.set(&value).await
            }
            Kind::Date => {
                let value = value.as_f64().ok_or_else(|| JsError::new("milliseconds"))?;
                self.inner.as_date().map_err(error)?.set(value as i64).await
            }
            other => return Err(JsError::new(&format!("a {other} has no value to set"))),
        };
        Ok(change.map_err(error)?.seq as f64)
    }
}
