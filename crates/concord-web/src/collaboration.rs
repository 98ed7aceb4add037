//! Collaborators and shared references for JavaScript, with the Rust API's names:
//! `model.collaborators()`, `string.indexReference(key)`, `string.rangeReference(key)`,
//! `object.propertyReference(key)`, `model.elementReference(key)`, `reference(sessionId,
//! key)`. Values are plain JS: indices (UTF-16 code units, converted against the current
//! text), ranges `{ start, end }`, property names, element ids `"replica:counter"`.

use concord_client::{
    Element, ElementId, IndexRange, LocalReference as ClientReference, ReferenceValue, ReplicaId,
    SessionId, SharedReference,
};
use serde_json::{Value, json};
use wasm_bindgen::prelude::*;

use crate::{RealTimeElement, RealTimeModel, char_index, error, events, to_js};

/// The UTF-16 position of `char` index `chars` in `text` (clamped to its end).
fn utf16_index(text: &str, chars: usize) -> usize {
    text.chars().take(chars).map(char::len_utf16).sum()
}

fn parse_element(text: &str) -> Result<ElementId, JsError> {
    let parsed = text.split_once(':').and_then(|(replica, counter)| {
        Some(ElementId {
            replica: ReplicaId(replica.parse().ok()?),
            counter: counter.parse().ok()?,
        })
    });
    parsed.ok_or_else(|| JsError::new(&format!("{text:?} is not an element id (replica:counter)")))
}

/// The text of the string a reference lives on, for position conversions.
async fn text_of(element: &Option<Element>) -> Result<Option<String>, JsError> {
    match element {
        Some(element) if element.kind() == concord_client::Kind::String => {
            Ok(Some(element.as_string().map_err(error)?.value().await.map_err(error)?))
        }
        _ => Ok(None),
    }
}

/// A reference value as JS sees it.
fn value_to_js(value: &ReferenceValue, text: Option<&str>) -> Value {
    let position = |p: usize| text.map_or(p, |t| utf16_index(t, p));
    match value {
        ReferenceValue::Index(indices) => {
            json!(indices.iter().map(|p| position(*p)).collect::<Vec<_>>())
        }
        ReferenceValue::Range(ranges) => json!(
            ranges
                .iter()
                .map(|r| json!({ "start": position(r.start), "end": position(r.end) }))
                .collect::<Vec<_>>()
        ),
        ReferenceValue::Property(keys) => json!(keys),
        ReferenceValue::Element(ids) => {
            json!(ids.iter().map(|id| events::element(*id)).collect::<Vec<_>>())
        }
    }
}

/// `undefined` when not shared, `null` when shared without a value, else the value.
fn shared_to_js(
    value: Option<Option<ReferenceValue>>,
    text: Option<&str>,
) -> Result<JsValue, JsError> {
    match value {
        None => Ok(JsValue::UNDEFINED),
        Some(None) => Ok(JsValue::NULL),
        Some(Some(value)) => to_js(&value_to_js(&value, text)),
    }
}

/// One of this client's references.
#[wasm_bindgen]
#[derive(Debug, Clone)]
pub struct LocalReference {
    inner: ClientReference,
    /// The element it lives on (none for element references).
    element: Option<Element>,
}

#[wasm_bindgen]
impl LocalReference {
    pub fn key(&self) -> String {
        self.inner.key().key.clone()
    }

    /// Shares it (without a value, unless it has one).
    pub async fn share(&self) -> Result<(), JsError> {
        self.inner.share().await.map_err(error)
    }

    /// Sets it: an index or indices (index references), `{ start, end }` or a list of them
    /// (range references), property names, element ids.
    pub async fn set(&self, value: JsValue) -> Result<(), JsError> {
        let json: Value =
            serde_wasm_bindgen::from_value(value).map_err(|e| JsError::new(&e.to_string()))?;
        let text = text_of(&self.element).await?;
        let position = |v: &Value| -> Result<usize, JsError> {
            let p = v.as_u64().ok_or_else(|| JsError::new("positions are numbers"))? as usize;
            Ok(text.as_deref().map_or(p, |t| char_index(t, p)))
        };
        let list = match &json {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        let value = match self.inner.kind() {
            concord_client::ReferenceKind::Index => {
                ReferenceValue::Index(list.iter().map(position).collect::<Result<_, _>>()?)
            }
            concord_client::ReferenceKind::Range => ReferenceValue::Range(
                list.iter()
                    .map(|r| {
                        Ok(IndexRange { start: position(&r["start"])?, end: position(&r["end"])? })
                    })
                    .collect::<Result<_, JsError>>()?,
            ),
            concord_client::ReferenceKind::Property => ReferenceValue::Property(
                list.iter()
                    .map(|k| {
                        k.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| JsError::new("property names are strings"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            concord_client::ReferenceKind::Element => ReferenceValue::Element(
                list.iter()
                    .map(|id| parse_element(id.as_str().unwrap_or_default()))
                    .collect::<Result<_, _>>()?,
            ),
        };
        self.inner.set(value).await.map_err(error)
    }

    /// Keeps it shared, without a value.
    pub async fn clear(&self) -> Result<(), JsError> {
        self.inner.clear().await.map_err(error)
    }

    /// Stops sharing it; false if it was not shared.
    pub async fn unshare(&self) -> Result<bool, JsError> {
        self.inner.unshare().await.map_err(error)
    }

    /// Its value: `undefined` when not shared, `null` without a value.
    pub async fn value(&self) -> Result<JsValue, JsError> {
        let value = self.inner.value().await.map_err(error)?;
        shared_to_js(value, text_of(&self.element).await?.as_deref())
    }
}

fn reference(inner: ClientReference, element: Option<Element>) -> LocalReference {
    LocalReference { inner, element }
}

fn shared_list(list: Vec<SharedReference>) -> Value {
    json!(
        list.iter()
            .map(|r| json!({
                "session": r.session.0,
                "element": r.reference.element.map(events::element),
                "key": r.reference.key,
                "value": r.value.as_ref().map(|v| value_to_js(v, None)),
            }))
            .collect::<Vec<_>>()
    )
}

#[wasm_bindgen]
impl RealTimeModel {
    /// `[{ session, user }]`: the other sessions that have the model open.
    pub async fn collaborators(&self) -> Result<JsValue, JsError> {
        let list = self.inner.collaborators().await.map_err(error)?;
        let list: Vec<Value> =
            list.iter().map(|c| json!({ "session": c.session.0, "user": c.user.0 })).collect();
        to_js(&list)
    }

    /// This client's session, as others see it (`undefined` before the first connection).
    #[wasm_bindgen(js_name = sessionId)]
    pub async fn session_id(&self) -> Result<Option<String>, JsError> {
        Ok(self.inner.session_id().await.map_err(error)?.map(|s| s.0))
    }

    #[wasm_bindgen(js_name = elementReference)]
    pub fn element_reference(&self, key: String) -> LocalReference {
        reference(self.inner.element_reference(&key), None)
    }

    /// Another session's model-level reference.
    pub async fn reference(&self, session_id: String, key: String) -> Result<JsValue, JsError> {
        let value = self.inner.reference(&SessionId(session_id), &key).await.map_err(error)?;
        shared_to_js(value, None)
    }

    /// `[{ session, element, key, value }]`: every other session's reference (positions in
    /// `char`s).
    pub async fn references(&self) -> Result<JsValue, JsError> {
        to_js(&shared_list(self.inner.references().await.map_err(error)?))
    }
}

#[wasm_bindgen]
impl RealTimeElement {
    /// Strings: a cursor.
    #[wasm_bindgen(js_name = indexReference)]
    pub fn index_reference(&self, key: String) -> Result<LocalReference, JsError> {
        let string = self.inner.as_string().map_err(error)?;
        Ok(reference(string.index_reference(&key), Some(self.inner.clone())))
    }

    /// Strings: a selection.
    #[wasm_bindgen(js_name = rangeReference)]
    pub fn range_reference(&self, key: String) -> Result<LocalReference, JsError> {
        let string = self.inner.as_string().map_err(error)?;
        Ok(reference(string.range_reference(&key), Some(self.inner.clone())))
    }

    /// Objects: highlighted properties.
    #[wasm_bindgen(js_name = propertyReference)]
    pub fn property_reference(&self, key: String) -> Result<LocalReference, JsError> {
        let object = self.inner.as_object().map_err(error)?;
        Ok(reference(object.property_reference(&key), Some(self.inner.clone())))
    }

    /// Another session's reference on this element.
    pub async fn reference(&self, session_id: String, key: String) -> Result<JsValue, JsError> {
        let value = self.inner.reference(&SessionId(session_id), &key).await.map_err(error)?;
        let element = Some(self.inner.clone());
        shared_to_js(value, text_of(&element).await?.as_deref())
    }
}
