//! An open model for JavaScript: its value, elements, batches, watermarks and events.

use concord_client::{Change, ModelEvent, RealTimeModel as ClientModel};
use wasm_bindgen::prelude::*;

use crate::element::{BatchEdit, RealTimeElement};
use crate::{WebError, collaboration, error, events, from_js, path_of, subscription, to_js};

/// An open model.
#[wasm_bindgen]
#[derive(Debug, Clone)]
pub struct RealTimeModel {
    pub(crate) inner: ClientModel,
}

impl RealTimeModel {
    pub(crate) fn new(inner: ClientModel) -> RealTimeModel {
        RealTimeModel { inner }
    }
}

/// A seq from JavaScript (a watermark value or what a change resolved to).
fn change(seq: f64) -> Result<Change, WebError> {
    Ok(Change { seq: crate::index(seq, "a change's seq")? as u64 })
}

#[wasm_bindgen]
impl RealTimeModel {
    pub fn id(&self) -> String {
        self.inner.id().as_str().to_owned()
    }

    pub fn collection(&self) -> String {
        self.inner.collection().as_str().to_owned()
    }

    /// The local view as JSON.
    #[wasm_bindgen(unchecked_return_type = "JsonObject")]
    pub async fn value(&self) -> Result<JsValue, WebError> {
        to_js(&self.inner.value().await.map_err(error)?)
    }

    /// The server version the local copy includes.
    pub async fn version(&self) -> Result<f64, WebError> {
        Ok(self.inner.version().await.map_err(error)? as f64)
    }

    /// `{ id, collection, version, createdAt, modifiedAt }` (times in ms since the epoch).
    #[wasm_bindgen(unchecked_return_type = "ModelInfo")]
    pub async fn info(&self) -> Result<JsValue, WebError> {
        let info = self.inner.info().await.map_err(error)?;
        to_js(&serde_json::json!({
            "id": info.id.as_str(), "collection": info.collection.as_str(),
            "version": info.version, "createdAt": info.created_at, "modifiedAt": info.modified_at,
        }))
    }

    pub fn root(&self) -> RealTimeElement {
        RealTimeElement::new(self.inner.root().element().clone())
    }

    /// The element at `path` (keys and indices), or `undefined`.
    #[wasm_bindgen(js_name = elementAt)]
    pub async fn element_at(
        &self,
        #[wasm_bindgen(unchecked_param_type = "Path")] path: Vec<JsValue>,
    ) -> Result<Option<RealTimeElement>, WebError> {
        let path = path_of(path)?;
        let element = self.inner.element_at(&path).await.map_err(error)?;
        Ok(element.map(RealTimeElement::new))
    }

    /// The element with this id (`"replica:counter"`, as events and references name them),
    /// or `undefined` when it no longer exists.
    pub async fn element(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ElementRef")] id: String,
    ) -> Result<Option<RealTimeElement>, WebError> {
        let id = collaboration::parse_element(&id)?;
        Ok(self.inner.element(id).await.map_err(error)?.map(RealTimeElement::new))
    }

    /// Several changes as one, all or nothing, in order (each sees the ones before it);
    /// resolves to the batch's seq.
    pub async fn batch(
        &self,
        #[wasm_bindgen(unchecked_param_type = "BatchEdit[]")] edits: JsValue,
    ) -> Result<f64, WebError> {
        let edits: Vec<BatchEdit> = serde_wasm_bindgen::from_value(edits)
            .map_err(|e| WebError::invalid(format!("a batch is a list of edits: {e}")))?;
        let mut targets = Vec::with_capacity(edits.len());
        for edit in &edits {
            let id = collaboration::parse_element(&edit.element)?;
            let element = self.inner.element(id).await.map_err(error)?;
            targets.push(element.ok_or_else(|| error(concord_client::ClientError::NoSuchElement))?);
        }
        let change = self
            .inner
            .batch(move |batch| {
                for (edit, element) in edits.into_iter().zip(&targets) {
                    let edit = edit.into_edit(batch.document(), element)?;
                    batch.change(element, edit)?;
                }
                Ok(())
            })
            .await
            .map_err(error)?;
        Ok(change.seq as f64)
    }

    /// `{ last, stored, acknowledged }`: how far local changes got.
    #[wasm_bindgen(unchecked_return_type = "Watermarks")]
    pub fn watermarks(&self) -> Result<JsValue, WebError> {
        let w = self.inner.watermarks();
        to_js(
            &serde_json::json!({ "last": w.last, "stored": w.stored, "acknowledged": w.acknowledged }),
        )
    }

    /// Resolves once local change `seq` (and every one before it) is in the offline store.
    pub async fn stored(&self, seq: f64) -> Result<(), WebError> {
        self.inner.stored(change(seq)?).await.map_err(error)
    }

    /// Resolves once the server acknowledged local change `seq` (and every one before it).
    pub async fn acknowledged(&self, seq: f64) -> Result<(), WebError> {
        self.inner.acknowledged(change(seq)?).await.map_err(error)
    }

    /// Calls `callback(event)` for each model event (every kind in `docs/web.md`); returns
    /// the function that ends the subscription (until then it keeps the model open).
    #[wasm_bindgen(js_name = onEvent, unchecked_return_type = "Unsubscribe")]
    pub fn on_event(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(event: ModelEvent) => void")]
        callback: js_sys::Function,
    ) -> js_sys::Function {
        let model = self.clone();
        let events = subscription::converted(self.inner.events(), move |event| {
            let model = model.clone();
            async move {
                // Another session's reference on a string: its positions in UTF-16 units of
                // the text as it is now.
                let text = match &event {
                    ModelEvent::RemoteReference { reference, .. } => {
                        collaboration::text_by_id(&model, reference.element).await.ok().flatten()
                    }
                    _ => None,
                };
                to_js(&events::model_event(event, text.as_deref())).ok()
            }
        });
        subscription::subscribe(events, callback)
    }

    /// Closes this handle (the model stays open while other handles or subscriptions of it
    /// exist).
    pub fn close(self) {}

    /// Replaces the whole model's data.
    #[wasm_bindgen(js_name = setValue)]
    pub async fn set_value(
        &self,
        #[wasm_bindgen(unchecked_param_type = "JsonObject")] value: JsValue,
    ) -> Result<f64, WebError> {
        let serde_json::Value::Object(values) = from_js(value)? else {
            return Err(WebError::invalid("a model's data is an object"));
        };
        let change = self.inner.root().set_value(values).await.map_err(error)?;
        Ok(change.seq as f64)
    }
}
