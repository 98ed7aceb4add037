//! Detached values: what operations carry and what snapshots are made of.
//!
//! A [`Value`] is a tree like the document's, with an [`ElementId`] on every node. It is the
//! form in which values travel (inside operations, snapshots, events); inside a
//! [`Document`](crate::Document) the same tree is stored flat, indexed by id.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::{ElementId, IdGenerator};

/// One node of a model with its whole subtree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Value {
    pub id: ElementId,
    pub data: ValueData,
}

/// The content of a [`Value`]. Numbers are finite `f64`s; dates are milliseconds since the
/// Unix epoch, UTC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ValueData {
    Object(BTreeMap<String, Value>),
    Array(Vec<Value>),
    String(String),
    Number(f64),
    Boolean(bool),
    Null,
    Date(i64),
}

/// The kind of a node, for type checks and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Boolean,
    Null,
    Date,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Kind::Object => "object",
            Kind::Array => "array",
            Kind::String => "string",
            Kind::Number => "number",
            Kind::Boolean => "boolean",
            Kind::Null => "null",
            Kind::Date => "date",
        };
        f.write_str(name)
    }
}

/// Why a value cannot enter a document.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    #[error("element id {0} appears more than once")]
    DuplicateId(ElementId),
    #[error("number {value} of element {id} is not finite")]
    NonFiniteNumber { id: ElementId, value: f64 },
    #[error("the root of a model must be an object, not {0}")]
    RootNotObject(Kind),
    #[error("JSON number {0} is not representable as a finite f64")]
    UnrepresentableJsonNumber(String),
}

impl ValueData {
    pub fn kind(&self) -> Kind {
        match self {
            ValueData::Object(_) => Kind::Object,
            ValueData::Array(_) => Kind::Array,
            ValueData::String(_) => Kind::String,
            ValueData::Number(_) => Kind::Number,
            ValueData::Boolean(_) => Kind::Boolean,
            ValueData::Null => Kind::Null,
            ValueData::Date(_) => Kind::Date,
        }
    }
}

impl Value {
    pub fn new(id: ElementId, data: ValueData) -> Value {
        Value { id, data }
    }

    pub fn kind(&self) -> Kind {
        self.data.kind()
    }

    /// Calls `f` with every id in this subtree, parents before children.
    pub fn for_each_id(&self, f: &mut impl FnMut(ElementId)) {
        f(self.id);
        match &self.data {
            ValueData::Object(children) => children.values().for_each(|c| c.for_each_id(f)),
            ValueData::Array(children) => children.iter().for_each(|c| c.for_each_id(f)),
            _ => {}
        }
    }

    /// Checks what a document requires of any value it takes in: ids unique within the
    /// value, numbers finite.
    pub fn validate(&self) -> Result<(), ValueError> {
        let mut seen = std::collections::BTreeSet::new();
        self.validate_into(&mut seen)
    }

    pub(crate) fn validate_into(
        &self,
        seen: &mut std::collections::BTreeSet<ElementId>,
    ) -> Result<(), ValueError> {
        if !seen.insert(self.id) {
            return Err(ValueError::DuplicateId(self.id));
        }
        match &self.data {
            ValueData::Object(children) => {
                children.values().try_for_each(|c| c.validate_into(seen))
            }
            ValueData::Array(children) => children.iter().try_for_each(|c| c.validate_into(seen)),
            ValueData::Number(n) if !n.is_finite() => {
                Err(ValueError::NonFiniteNumber { id: self.id, value: *n })
            }
            _ => Ok(()),
        }
    }

    /// Builds a value from JSON, minting ids from `ids`. `{"$date": ms}` becomes a date.
    pub fn from_json(json: &serde_json::Value, ids: &mut IdGenerator) -> Result<Value, ValueError> {
        let id = ids.next();
        let data = match json {
            serde_json::Value::Null => ValueData::Null,
            serde_json::Value::Bool(b) => ValueData::Boolean(*b),
            serde_json::Value::Number(n) => match n.as_f64() {
                Some(f) if f.is_finite() => ValueData::Number(f),
                _ => return Err(ValueError::UnrepresentableJsonNumber(n.to_string())),
            },
            serde_json::Value::String(s) => ValueData::String(s.clone()),
            serde_json::Value::Array(items) => ValueData::Array(
                items.iter().map(|item| Value::from_json(item, ids)).collect::<Result<_, _>>()?,
            ),
            serde_json::Value::Object(map) => match date_millis(map) {
                Some(ms) => ValueData::Date(ms),
                None => ValueData::Object(
                    map.iter()
                        .map(|(k, v)| Ok((k.clone(), Value::from_json(v, ids)?)))
                        .collect::<Result<_, ValueError>>()?,
                ),
            },
        };
        Ok(Value { id, data })
    }

    /// The JSON form of this value, without ids; dates become `{"$date": ms}`.
    pub fn to_json(&self) -> serde_json::Value {
        match &self.data {
            ValueData::Object(children) => serde_json::Value::Object(
                children.iter().map(|(k, v)| (k.clone(), v.to_json())).collect(),
            ),
            ValueData::Array(items) => {
                serde_json::Value::Array(items.iter().map(Value::to_json).collect())
            }
            ValueData::String(s) => serde_json::Value::String(s.clone()),
            ValueData::Number(n) => number_to_json(*n),
            ValueData::Boolean(b) => serde_json::Value::Bool(*b),
            ValueData::Null => serde_json::Value::Null,
            ValueData::Date(ms) => date_to_json(*ms),
        }
    }
}

pub(crate) fn number_to_json(n: f64) -> serde_json::Value {
    serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

pub(crate) fn date_to_json(ms: i64) -> serde_json::Value {
    serde_json::json!({ "$date": ms })
}

fn date_millis(map: &serde_json::Map<String, serde_json::Value>) -> Option<i64> {
    if map.len() != 1 {
        return None;
    }
    map.get("$date")?.as_i64()
}
