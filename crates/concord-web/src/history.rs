//! `models().history(id)`: a read-only model at past versions, for JavaScript. Moves are
//! async (they may fetch pages); reads are synchronous JSON. One move at a time: a call made
//! while another is under way is refused.

use std::cell::RefCell;
use std::rc::Rc;

use concord_client::{HistoricalModel as ClientHistory, Timestamp};
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::{WebError, error, to_js};

/// A model's history, at one version.
#[wasm_bindgen]
#[derive(Debug, Clone)]
pub struct HistoricalModel {
    inner: Rc<RefCell<Option<ClientHistory>>>,
}

/// The operation that made a version, as JavaScript sees it.
#[derive(Serialize)]
struct Step<'a> {
    version: u64,
    session: &'a str,
    user: Option<&'a str>,
    timestamp: i64,
    operation: serde_json::Value,
}

impl HistoricalModel {
    pub(crate) fn new(history: ClientHistory) -> HistoricalModel {
        HistoricalModel { inner: Rc::new(RefCell::new(Some(history))) }
    }

    fn read<T>(&self, read: impl FnOnce(&ClientHistory) -> T) -> Result<T, WebError> {
        let inner = self.inner.borrow();
        inner.as_ref().map(read).ok_or_else(busy)
    }

    /// Runs one move on the model, taken out meanwhile so that nothing else moves it.
    async fn moving<F, Fut, T>(&self, move_it: F) -> Result<T, WebError>
    where
        F: FnOnce(ClientHistory) -> Fut,
        Fut: std::future::Future<Output = (ClientHistory, Result<T, concord_client::ClientError>)>,
    {
        let history = self.inner.borrow_mut().take().ok_or_else(busy)?;
        let (history, result) = move_it(history).await;
        *self.inner.borrow_mut() = Some(history);
        result.map_err(error)
    }
}

fn busy() -> WebError {
    WebError::with_code("busy", "the historical model is moving; wait for the last call to finish")
}

#[wasm_bindgen]
impl HistoricalModel {
    pub fn id(&self) -> Result<String, WebError> {
        self.read(|h| h.id().as_str().to_owned())
    }

    pub fn collection(&self) -> Result<String, WebError> {
        self.read(|h| h.collection().as_str().to_owned())
    }

    /// When the model was created, in ms since the Unix epoch.
    #[wasm_bindgen(js_name = createdAt)]
    pub fn created_at(&self) -> Result<f64, WebError> {
        self.read(|h| h.created_at().0 as f64)
    }

    pub fn version(&self) -> Result<f64, WebError> {
        self.read(|h| h.version() as f64)
    }

    #[wasm_bindgen(js_name = minVersion)]
    pub fn min_version(&self) -> Result<f64, WebError> {
        self.read(|h| h.min_version() as f64)
    }

    #[wasm_bindgen(js_name = maxVersion)]
    pub fn max_version(&self) -> Result<f64, WebError> {
        self.read(|h| h.max_version() as f64)
    }

    /// When the version shown was committed, in ms since the Unix epoch.
    #[wasm_bindgen(js_name = modifiedAt)]
    pub fn modified_at(&self) -> Result<f64, WebError> {
        self.read(|h| h.modified_at().0 as f64)
    }

    /// The whole model at the version shown, as JSON.
    #[wasm_bindgen(unchecked_return_type = "JsonObject")]
    pub fn value(&self) -> Result<JsValue, WebError> {
        to_js(&self.read(|h| h.value())?)
    }

    /// The element at `path` (keys and indices) as JSON, or `undefined`.
    #[wasm_bindgen(js_name = valueAt)]
    #[wasm_bindgen(unchecked_return_type = "JsonValue | undefined")]
    pub fn value_at(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Path")] path: Vec<JsValue>,
    ) -> Result<JsValue, WebError> {
        let path = crate::path_of(path)?;
        let value = self.read(|h| h.element_at(&path).map(|e| e.json()))?;
        match value {
            Some(value) => to_js(&value),
            None => Ok(JsValue::UNDEFINED),
        }
    }

    /// `{ version, session, user, timestamp, operation }` of the operation that made the
    /// version shown, or `undefined` at the oldest version.
    #[wasm_bindgen(unchecked_return_type = "HistoryStep | undefined")]
    pub fn operation(&self) -> Result<JsValue, WebError> {
        let step = self.read(|h| {
            h.operation().map(|o| {
                to_js(&Step {
                    version: o.operation.version,
                    session: &o.operation.author.0,
                    user: o.user.as_ref().map(|u| u.0.as_str()),
                    timestamp: o.operation.timestamp.0,
                    operation: serde_json::to_value(&o.operation.operation)
                        .unwrap_or(serde_json::Value::Null),
                })
            })
        })?;
        step.unwrap_or(Ok(JsValue::UNDEFINED))
    }

    #[wasm_bindgen(js_name = playTo)]
    pub async fn play_to(&self, version: f64) -> Result<(), WebError> {
        self.moving(|mut h| async move {
            let result = h.play_to(version as u64).await;
            (h, result)
        })
        .await
    }

    pub async fn forward(&self, steps: f64) -> Result<(), WebError> {
        self.moving(|mut h| async move {
            let result = h.forward(steps as u64).await;
            (h, result)
        })
        .await
    }

    pub async fn backward(&self, steps: f64) -> Result<(), WebError> {
        self.moving(|mut h| async move {
            let result = h.backward(steps as u64).await;
            (h, result)
        })
        .await
    }

    /// Shows the version current at `time` (ms since the Unix epoch).
    #[wasm_bindgen(js_name = playToTime)]
    pub async fn play_to_time(&self, time: f64) -> Result<(), WebError> {
        self.moving(|mut h| async move {
            let result = h.play_to_time(Timestamp(time as i64)).await;
            (h, result)
        })
        .await
    }

    /// The last version committed at or before `time` (ms since the Unix epoch).
    #[wasm_bindgen(js_name = versionAtTime)]
    pub async fn version_at_time(&self, time: f64) -> Result<f64, WebError> {
        self.moving(|h| async move {
            let result = h.version_at_time(Timestamp(time as i64)).await.map(|v| v as f64);
            (h, result)
        })
        .await
    }
}
