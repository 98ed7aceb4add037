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

use crate::element::char_index;
use crate::{RealTimeElement, RealTimeModel, WebError, error, events, to_js};

/// The UTF-16 position of `char` index `chars` in `text` (clamped to its end).
fn utf16_index(text: &str, chars: usize) -> usize {
    text.chars().take(chars).map(char::len_utf16).sum()
}

pub(crate) fn parse_element(text: &str) -> Result<ElementId, WebError> {
    let parsed = text.split_once(':').and_then(|(replica, counter)| {
        Some(ElementId {
            replica: ReplicaId(replica.parse().ok()?),
            counter: counter.parse().ok()?,
        })
    });
    parsed.ok_or_else(|| {
        WebError::invalid(format!("{text:?} is not an element id (replica:counter)"))
    })
}

/// The text of the string a reference lives on, for position conversions.
async fn text_of(element: &Option<Element>) -> Result<Option<String>, WebError> {
    match element {
        Some(element) if element.kind() == concord_client::Kind::String => {
            Ok(Some(element.as_string().map_err(error)?.value().await.map_err(error)?))
        }
        _ => Ok(None),
    }
}

/// The text of the string element `id` of `model`, if it is one: what positions of a
/// reference on it are converted against.
pub(crate) async fn text_by_id(
    model: &RealTimeModel,
    id: Option<ElementId>,
) -> Result<Option<String>, WebError> {
    let Some(id) = id else { return Ok(None) };
    text_of(&model.inner.element(id).await.map_err(error)?).await
}

/// A reference value as JS sees it.
pub(crate) fn value_to_js(value: &ReferenceValue, text: Option<&str>) -> Value {
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
) -> Result<JsValue, WebError> {
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
    pub async fn share(&self) -> Result<(), WebError> {
        self.inner.share().await.map_err(error)
    }

    /// Sets it: an index or indices (index references), `{ start, end }` or a list of them
    /// (range references), property names, element ids.
    pub async fn set(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ReferenceInput")] value: JsValue,
    ) -> Result<(), WebError> {
        let json: Value =
            serde_wasm_bindgen::from_value(value).map_err(|e| WebError::invalid(e.to_string()))?;
        let text = text_of(&self.element).await?;
        let position = |v: &Value| -> Result<usize, WebError> {
            let p = v.as_u64().ok_or_else(|| WebError::invalid("positions are numbers"))? as usize;
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
                    .collect::<Result<_, WebError>>()?,
            ),
            concord_client::ReferenceKind::Property => ReferenceValue::Property(
                list.iter()
                    .map(|k| {
                        k.as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| WebError::invalid("property names are strings"))
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
    pub async fn clear(&self) -> Result<(), WebError> {
        self.inner.clear().await.map_err(error)
    }

    /// Stops sharing it; false if it was not shared.
    pub async fn unshare(&self) -> Result<bool, WebError> {
        self.inner.unshare().await.map_err(error)
    }

    /// Its value: `undefined` when not shared, `null` without a value.
    #[wasm_bindgen(unchecked_return_type = "ReferenceValue | null | undefined")]
    pub async fn value(&self) -> Result<JsValue, WebError> {
        let value = self.inner.value().await.map_err(error)?;
        shared_to_js(value, text_of(&self.element).await?.as_deref())
    }
}

fn reference(inner: ClientReference, element: Option<Element>) -> LocalReference {
    LocalReference { inner, element }
}

/// Every other session's reference, positions in UTF-16 code units of the text each lives on.
async fn shared_list(model: &RealTimeModel, list: Vec<SharedReference>) -> Result<Value, WebError> {
    let mut shown = Vec::with_capacity(list.len());
    for r in list {
        let text = text_by_id(model, r.reference.element).await?;
        shown.push(json!({
            "session": r.session.0,
            "element": r.reference.element.map(events::element),
            "key": r.reference.key,
            "value": r.value.as_ref().map(|v| value_to_js(v, text.as_deref())),
        }));
    }
    Ok(Value::Array(shown))
}

#[wasm_bindgen]
impl RealTimeModel {
    /// `[{ session, user, since }]`: the other sessions that have the model open, and when
    /// they opened it (milliseconds since the epoch, server time).
    #[wasm_bindgen(unchecked_return_type = "Collaborator[]")]
    pub async fn collaborators(&self) -> Result<JsValue, WebError> {
        let list = self.inner.collaborators().await.map_err(error)?;
        let list: Vec<Value> = list
            .iter()
            .map(|c| json!({ "session": c.session.0, "user": c.user.0, "since": c.since.0 }))
            .collect();
        to_js(&list)
    }

    /// This client's session, as others see it (`undefined` before the first connection).
    #[wasm_bindgen(js_name = sessionId)]
    pub async fn session_id(&self) -> Result<Option<String>, WebError> {
        Ok(self.inner.session_id().await.map_err(error)?.map(|s| s.0))
    }

    #[wasm_bindgen(js_name = elementReference)]
    pub fn element_reference(&self, key: String) -> LocalReference {
        reference(self.inner.element_reference(&key), None)
    }

    /// Another session's model-level reference (`undefined` when not shared, `null`
    /// without a value).
    #[wasm_bindgen(unchecked_return_type = "ReferenceValue | null | undefined")]
    pub async fn reference(&self, session_id: String, key: String) -> Result<JsValue, WebError> {
        let value = self.inner.reference(&SessionId(session_id), &key).await.map_err(error)?;
        shared_to_js(value, None)
    }

    /// `[{ session, element, key, value }]`: every other session's reference (positions in
    /// UTF-16 code units).
    #[wasm_bindgen(unchecked_return_type = "SharedReference[]")]
    pub async fn references(&self) -> Result<JsValue, WebError> {
        let list = self.inner.references().await.map_err(error)?;
        to_js(&shared_list(self, list).await?)
    }
}

#[wasm_bindgen]
impl RealTimeElement {
    /// Strings: a cursor.
    #[wasm_bindgen(js_name = indexReference)]
    pub fn index_reference(&self, key: String) -> Result<LocalReference, WebError> {
        let string = self.inner.as_string().map_err(error)?;
        Ok(reference(string.index_reference(&key), Some(self.inner.clone())))
    }

    /// Strings: a selection.
    #[wasm_bindgen(js_name = rangeReference)]
    pub fn range_reference(&self, key: String) -> Result<LocalReference, WebError> {
        let string = self.inner.as_string().map_err(error)?;
        Ok(reference(string.range_reference(&key), Some(self.inner.clone())))
    }

    /// Objects: highlighted properties.
    #[wasm_bindgen(js_name = propertyReference)]
    pub fn property_reference(&self, key: String) -> Result<LocalReference, WebError> {
        let object = self.inner.as_object().map_err(error)?;
        Ok(reference(object.property_reference(&key), Some(self.inner.clone())))
    }

    /// Another session's reference on this element (`undefined` when not shared, `null`
    /// without a value).
    #[wasm_bindgen(unchecked_return_type = "ReferenceValue | null | undefined")]
    pub async fn reference(&self, session_id: String, key: String) -> Result<JsValue, WebError> {
        let value = self.inner.reference(&SessionId(session_id), &key).await.map_err(error)?;
        let element = Some(self.inner.clone());
        shared_to_js(value, text_of(&element).await?.as_deref())
    }
}
