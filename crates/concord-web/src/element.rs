//! Element handles for JavaScript, and the edits of `RealTimeModel.batch`. String positions
//! are UTF-16 code units here, converted against the text at the moment the change is
//! built.

use concord_client::{ClientError, Document, Edit, Element, Kind};
use serde::Deserialize;
use serde_json::Value;
use wasm_bindgen::prelude::*;

use crate::{WebError, error, events, from_js, index, subscription, to_js};

/// The `char` index of UTF-16 position `utf16` in `text` (clamped to its end; a position
/// inside a surrogate pair moves past that character).
pub(crate) fn char_index(text: &str, utf16: usize) -> usize {
    let mut units = 0;
    for (chars, c) in text.chars().enumerate() {
        if units >= utf16 {
            return chars;
        }
        units += c.len_utf16();
    }
    text.chars().count()
}

/// A splice in UTF-16 code units, as the model's `char` splice on `text`.
fn splice(text: &str, index: usize, delete: usize, insert: String) -> Edit {
    let start = char_index(text, index);
    let end = char_index(text, index.saturating_add(delete));
    Edit::StringSplice { index: start, delete: end - start, insert }
}

/// The change that replaces the whole value of an element of `kind` with `value`.
fn set_value(kind: Kind, value: Value) -> Result<Edit, ClientError> {
    let wrong = |what: &str| ClientError::InvalidValue(format!("a {kind} takes {what}"));
    Ok(match (kind, value) {
        (Kind::Object, Value::Object(values)) => Edit::ObjectSetValue { values },
        (Kind::Array, Value::Array(values)) => Edit::ArraySetValue { values },
        (Kind::String, Value::String(value)) => Edit::StringSet { value },
        (Kind::Number, Value::Number(n)) => Edit::NumberSet { value: n.as_f64().unwrap_or(0.0) },
        (Kind::Boolean, Value::Bool(value)) => Edit::BooleanSet { value },
        (Kind::Date, Value::Number(n)) => {
            Edit::DateSet { millis: n.as_i64().ok_or_else(|| wrong("whole milliseconds"))? }
        }
        (Kind::Null, _) => {
            return Err(ClientError::InvalidValue("a null has no value to set".into()));
        }
        (Kind::Object, _) => return Err(wrong("an object")),
        (Kind::Array, _) => return Err(wrong("an array")),
        (Kind::String, _) => return Err(wrong("a string")),
        (Kind::Boolean, _) => return Err(wrong("a boolean")),
        (Kind::Number | Kind::Date, _) => return Err(wrong("a number")),
    })
}

/// One edit of a batch, as JavaScript writes it (`BatchEdit` in the declarations).
#[derive(Debug, Deserialize)]
pub(crate) struct BatchEdit {
    pub(crate) element: String,
    #[serde(flatten)]
    op: BatchOp,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
enum BatchOp {
    Set {
        key: String,
        value: Value,
    },
    Remove {
        key: String,
    },
    Insert {
        index: usize,
        value: Value,
    },
    RemoveAt {
        index: usize,
    },
    Replace {
        index: usize,
        value: Value,
    },
    Move {
        from: usize,
        to: usize,
    },
    Splice {
        index: usize,
        #[serde(rename = "deleteCount")]
        delete_count: usize,
        text: String,
    },
    SetValue {
        value: Value,
    },
    Add {
        delta: f64,
    },
}

impl BatchEdit {
    /// The model's change for this edit on `element`, against the batch's state so far.
    pub(crate) fn into_edit(
        self,
        document: &Document,
        element: &Element,
    ) -> Result<Edit, ClientError> {
        Ok(match self.op {
            BatchOp::Set { key, value } => Edit::ObjectSet { key, value },
            BatchOp::Remove { key } => Edit::ObjectRemove { key },
            BatchOp::Insert { index, value } => Edit::ArrayInsert { index, value },
            BatchOp::RemoveAt { index } => Edit::ArrayRemove { index },
            BatchOp::Replace { index, value } => Edit::ArrayReplace { index, value },
            BatchOp::Move { from, to } => Edit::ArrayMove { from, to },
            BatchOp::Splice { index, delete_count, text } => {
                let current = document.text(element.id()).ok_or(ClientError::NoSuchElement)?;
                splice(&current, index, delete_count, text)
            }
            BatchOp::SetValue { value } => set_value(element.kind(), value)?,
            BatchOp::Add { delta } => Edit::NumberAdd { delta },
        })
    }
}

/// A key (objects) or an index (arrays) from JavaScript.
enum Slot {
    Key(String),
    Index(usize),
}

/// An element of a model; its methods depend on its kind (`kind()`).
#[wasm_bindgen]
#[derive(Debug, Clone)]
pub struct RealTimeElement {
    pub(crate) inner: Element,
}

impl RealTimeElement {
    pub(crate) fn new(inner: Element) -> RealTimeElement {
        RealTimeElement { inner }
    }

    /// `key` as this element takes it: a key on objects, an index on arrays.
    fn slot(&self, key: &JsValue, what: &str) -> Result<Slot, WebError> {
        match (self.inner.kind(), key.as_string(), key.as_f64()) {
            (Kind::Object, Some(key), _) => Ok(Slot::Key(key)),
            (Kind::Array, _, Some(i)) => Ok(Slot::Index(index(i, "an index")?)),
            (Kind::Object | Kind::Array, _, _) => Err(WebError::invalid(format!(
                "{what} takes a key on objects and an index on arrays"
            ))),
            (other, _, _) => Err(error(ClientError::WrongKind {
                expected: "object or array",
                found: other.to_string(),
            })),
        }
    }

    /// Builds one change against the current state (for string positions) and applies it.
    async fn edit_with_document(
        &self,
        build: impl FnOnce(&Document, &Element) -> Result<Edit, ClientError> + Send + 'static,
    ) -> Result<f64, WebError> {
        let element = self.inner.clone();
        let model = self.inner.model().clone();
        let change = model
            .batch(move |batch| {
                let edit = build(batch.document(), &element)?;
                batch.change(&element, edit)
            })
            .await
            .map_err(error)?;
        Ok(change.seq as f64)
    }
}

#[wasm_bindgen]
impl RealTimeElement {
    /// `"replica:counter"`: what events, references and `model.element(id)` use.
    #[wasm_bindgen(unchecked_return_type = "ElementRef")]
    pub fn id(&self) -> String {
        events::element(self.inner.id())
    }

    #[wasm_bindgen(unchecked_return_type = "ElementKind")]
    pub fn kind(&self) -> String {
        self.inner.kind().to_string()
    }

    #[wasm_bindgen(unchecked_return_type = "JsonValue")]
    pub async fn value(&self) -> Result<JsValue, WebError> {
        to_js(&self.inner.json().await.map_err(error)?)
    }

    /// A child: by key (objects) or index (arrays); `undefined` if there is none.
    pub async fn get(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | number")] key: JsValue,
    ) -> Result<Option<RealTimeElement>, WebError> {
        let child = match self.slot(&key, "get")? {
            Slot::Key(key) => self.inner.as_object().map_err(error)?.get(&key).await,
            Slot::Index(i) => self.inner.as_array().map_err(error)?.get(i).await,
        };
        Ok(child.map_err(error)?.map(RealTimeElement::new))
    }

    /// Objects: the keys.
    pub async fn keys(&self) -> Result<Vec<String>, WebError> {
        self.inner.as_object().map_err(error)?.keys().await.map_err(error)
    }

    /// Objects: whether `key` is set.
    pub async fn has(&self, key: String) -> Result<bool, WebError> {
        let keys = self.inner.as_object().map_err(error)?.keys().await.map_err(error)?;
        Ok(keys.contains(&key))
    }

    /// Objects: sets `key` to `value`. Arrays: replaces the item at the index. Resolves to
    /// the change's seq.
    pub async fn set(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | number")] key: JsValue,
        #[wasm_bindgen(unchecked_param_type = "JsonValue")] value: JsValue,
    ) -> Result<f64, WebError> {
        let value = from_js(value)?;
        let change = match self.slot(&key, "set")? {
            Slot::Key(key) => self.inner.as_object().map_err(error)?.set(&key, value).await,
            Slot::Index(i) => self.inner.as_array().map_err(error)?.replace(i, value).await,
        };
        Ok(change.map_err(error)?.seq as f64)
    }

    /// Objects: removes `key`. Arrays: removes the item at the index.
    pub async fn remove(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string | number")] key: JsValue,
    ) -> Result<f64, WebError> {
        let change = match self.slot(&key, "remove")? {
            Slot::Key(key) => self.inner.as_object().map_err(error)?.remove(&key).await,
            Slot::Index(i) => self.inner.as_array().map_err(error)?.remove(i).await,
        };
        Ok(change.map_err(error)?.seq as f64)
    }

    /// Arrays: appends `value`.
    pub async fn push(
        &self,
        #[wasm_bindgen(unchecked_param_type = "JsonValue")] value: JsValue,
    ) -> Result<f64, WebError> {
        let value = from_js(value)?;
        let change = self.inner.as_array().map_err(error)?.push(value).await.map_err(error)?;
        Ok(change.seq as f64)
    }

    /// Arrays: inserts `value` at `index`. Strings: inserts the text `value` at `index`
    /// (UTF-16 code units).
    pub async fn insert(
        &self,
        index: f64,
        #[wasm_bindgen(unchecked_param_type = "JsonValue")] value: JsValue,
    ) -> Result<f64, WebError> {
        let at = crate::index(index, "an index")?;
        if self.inner.kind() == Kind::String {
            let text = value.as_string().ok_or_else(|| WebError::invalid("a string takes text"))?;
            return self.splice(index, 0.0, text).await;
        }
        let value = from_js(value)?;
        let array = self.inner.as_array().map_err(error)?;
        Ok(array.insert(at, value).await.map_err(error)?.seq as f64)
    }

    /// Arrays: replaces the item at `index`.
    pub async fn replace(
        &self,
        index: f64,
        #[wasm_bindgen(unchecked_param_type = "JsonValue")] value: JsValue,
    ) -> Result<f64, WebError> {
        let (at, value) = (crate::index(index, "an index")?, from_js(value)?);
        let array = self.inner.as_array().map_err(error)?;
        Ok(array.replace(at, value).await.map_err(error)?.seq as f64)
    }

    /// Arrays: moves the item at `from` to `to`.
    #[wasm_bindgen(js_name = "move")]
    pub async fn move_item(&self, from: f64, to: f64) -> Result<f64, WebError> {
        let (from, to) = (index(from, "from")?, index(to, "to")?);
        let array = self.inner.as_array().map_err(error)?;
        Ok(array.move_item(from, to).await.map_err(error)?.seq as f64)
    }

    /// Strings: deletes `deleteCount` and inserts `text` at `index` (UTF-16 code units).
    pub async fn splice(
        &self,
        index: f64,
        delete_count: f64,
        text: String,
    ) -> Result<f64, WebError> {
        let (at, delete) =
            (crate::index(index, "an index")?, crate::index(delete_count, "a count")?);
        self.inner.as_string().map_err(error)?;
        self.edit_with_document(move |document, element| {
            let current = document.text(element.id()).ok_or(ClientError::NoSuchElement)?;
            Ok(splice(&current, at, delete, text))
        })
        .await
    }

    /// Strings: the length in UTF-16 code units. Arrays: the number of items. Objects: the
    /// number of keys.
    pub async fn length(&self) -> Result<usize, WebError> {
        match self.inner.kind() {
            Kind::Array => self.inner.as_array().map_err(error)?.len().await.map_err(error),
            Kind::Object => Ok(self.keys().await?.len()),
            _ => {
                let text = self.inner.as_string().map_err(error)?.value().await.map_err(error)?;
                Ok(text.encode_utf16().count())
            }
        }
    }

    /// Numbers: adds `delta`.
    pub async fn add(&self, delta: f64) -> Result<f64, WebError> {
        let number = self.inner.as_number().map_err(error)?;
        Ok(number.add(delta).await.map_err(error)?.seq as f64)
    }

    /// Replaces the whole value: an object, an array, a string, a number, a boolean, or
    /// milliseconds for a date.
    #[wasm_bindgen(js_name = setValue)]
    pub async fn set_value(
        &self,
        #[wasm_bindgen(unchecked_param_type = "JsonValue")] value: JsValue,
    ) -> Result<f64, WebError> {
        let value = from_js(value)?;
        self.edit_with_document(move |_, element| set_value(element.kind(), value)).await
    }

    /// Calls `callback(event)` for each change of this element; returns the function that
    /// ends the subscription.
    #[wasm_bindgen(js_name = onEvent, unchecked_return_type = "Unsubscribe")]
    pub fn on_event(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(event: ElementEvent) => void")]
        callback: js_sys::Function,
    ) -> js_sys::Function {
        let events = subscription::converted(self.inner.events(), |change| async move {
            to_js(&events::element_event(&change)).ok()
        });
        subscription::subscribe(events, callback)
    }
}
