//! The document: a model's tree stored flat, indexed by element id.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::apply::ApplyError;
use crate::id::ElementId;
use crate::text::Text;
use crate::value::{Kind, Value, ValueData, ValueError};

/// A model's data: a tree whose root is an object, every node reachable by its id in
/// O(log n) without walking the tree. Paths are computed on demand.
///
/// A `Document` only changes through [`Document::apply`], which validates first and leaves
/// the document unchanged when it fails.
#[derive(Clone, PartialEq)]
pub struct Document {
    pub(crate) root: ElementId,
    pub(crate) nodes: BTreeMap<ElementId, Node>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub(crate) parent: Option<ElementId>,
    pub(crate) data: NodeData,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NodeData {
    Object(BTreeMap<String, ElementId>),
    Array(Vec<ElementId>),
    String(Text),
    Number(f64),
    Boolean(bool),
    Null,
    Date(i64),
}

impl NodeData {
    pub(crate) fn kind(&self) -> Kind {
        match self {
            NodeData::Object(_) => Kind::Object,
            NodeData::Array(_) => Kind::Array,
            NodeData::String(_) => Kind::String,
            NodeData::Number(_) => Kind::Number,
            NodeData::Boolean(_) => Kind::Boolean,
            NodeData::Null => Kind::Null,
            NodeData::Date(_) => Kind::Date,
        }
    }
}

/// One step of a path from the root: an object key or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PathSegment {
    Key(String),
    Index(usize),
}

impl Document {
    /// A document holding `root`, which must be a valid object value.
    pub fn new(root: Value) -> Result<Document, ValueError> {
        if root.kind() != Kind::Object {
            return Err(ValueError::RootNotObject(root.kind()));
        }
        root.validate()?;
        let mut doc = Document { root: root.id, nodes: BTreeMap::new() };
        doc.attach(root, None);
        Ok(doc)
    }

    /// A document whose root is an empty object with id `root`.
    pub fn empty(root: ElementId) -> Document {
        let root = Value::new(root, ValueData::Object(BTreeMap::new()));
        Document::new(root).expect("an empty object is a valid root")
    }

    pub fn root_id(&self) -> ElementId {
        self.root
    }

    /// Number of elements, the root included.
    pub fn element_count(&self) -> usize {
        self.nodes.len()
    }

    pub fn contains(&self, id: ElementId) -> bool {
        self.nodes.contains_key(&id)
    }

    pub fn kind(&self, id: ElementId) -> Option<Kind> {
        self.nodes.get(&id).map(|n| n.data.kind())
    }

    /// Every element id, in id order.
    pub fn ids(&self) -> impl Iterator<Item = ElementId> + '_ {
        self.nodes.keys().copied()
    }

    /// The parent of `id`, `None` for the root or an unknown id.
    pub fn parent(&self, id: ElementId) -> Option<ElementId> {
        self.nodes.get(&id)?.parent
    }

    /// The content of a string element.
    pub fn text(&self, id: ElementId) -> Option<String> {
        match &self.nodes.get(&id)?.data {
            NodeData::String(text) => Some(text.to_string()),
            _ => None,
        }
    }

    /// Length in `char`s of a string element.
    pub fn text_len(&self, id: ElementId) -> Option<usize> {
        match &self.nodes.get(&id)?.data {
            NodeData::String(text) => Some(text.len_chars()),
            _ => None,
        }
    }

    /// Length of an array element.
    pub fn array_len(&self, id: ElementId) -> Option<usize> {
        match &self.nodes.get(&id)?.data {
            NodeData::Array(items) => Some(items.len()),
            _ => None,
        }
    }

    /// The children of an array, in order.
    pub fn array_items(&self, id: ElementId) -> Option<&[ElementId]> {
        match &self.nodes.get(&id)?.data {
            NodeData::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The properties of an object, by key.
    pub fn object_entries(&self, id: ElementId) -> Option<&BTreeMap<String, ElementId>> {
        match &self.nodes.get(&id)?.data {
            NodeData::Object(entries) => Some(entries),
            _ => None,
        }
    }

    /// A detached copy of the subtree rooted at `id`.
    pub fn value(&self, id: ElementId) -> Option<Value> {
        let node = self.nodes.get(&id)?;
        let data = match &node.data {
            NodeData::Object(entries) => ValueData::Object(
                entries.iter().map(|(k, c)| (k.clone(), self.value_of_child(*c))).collect(),
            ),
            NodeData::Array(items) => {
                ValueData::Array(items.iter().map(|c| self.value_of_child(*c)).collect())
            }
            NodeData::String(text) => ValueData::String(text.to_string()),
            NodeData::Number(n) => ValueData::Number(*n),
            NodeData::Boolean(b) => ValueData::Boolean(*b),
            NodeData::Null => ValueData::Null,
            NodeData::Date(ms) => ValueData::Date(*ms),
        };
        Some(Value { id, data })
    }

    fn value_of_child(&self, id: ElementId) -> Value {
        self.value(id).expect("a child id is always in the index")
    }

    /// The whole model as a detached value.
    pub fn to_value(&self) -> Value {
        self.value_of_child(self.root)
    }

    /// The whole model as JSON, without ids.
    pub fn to_json(&self) -> serde_json::Value {
        self.to_value().to_json()
    }

    /// The path from the root to `id`, or `None` if `id` is not in the document.
    pub fn path(&self, id: ElementId) -> Option<Vec<PathSegment>> {
        let mut path = Vec::new();
        let mut current = id;
        while let Some(parent) = self.nodes.get(&current)?.parent {
            let segment = match &self.nodes[&parent].data {
                NodeData::Object(entries) => PathSegment::Key(
                    entries.iter().find(|(_, c)| **c == current).map(|(k, _)| k.clone())?,
                ),
                NodeData::Array(items) => {
                    PathSegment::Index(items.iter().position(|c| *c == current)?)
                }
                _ => return None,
            };
            path.push(segment);
            current = parent;
        }
        path.reverse();
        Some(path)
    }

    /// The element at `path` from the root.
    pub fn element_at(&self, path: &[PathSegment]) -> Option<ElementId> {
        path.iter().try_fold(self.root, |at, segment| match (&self.nodes[&at].data, segment) {
            (NodeData::Object(entries), PathSegment::Key(key)) => entries.get(key).copied(),
            (NodeData::Array(items), PathSegment::Index(i)) => items.get(*i).copied(),
            _ => None,
        })
    }

    /// Inserts the subtree `value` under `parent`. The caller validated it.
    pub(crate) fn attach(&mut self, value: Value, parent: Option<ElementId>) -> ElementId {
        let id = value.id;
        let data = match value.data {
            ValueData::Object(entries) => NodeData::Object(
                entries.into_iter().map(|(k, v)| (k, self.attach(v, Some(id)))).collect(),
            ),
            ValueData::Array(items) => {
                NodeData::Array(items.into_iter().map(|v| self.attach(v, Some(id))).collect())
            }
            ValueData::String(s) => NodeData::String(Text::new(&s)),
            ValueData::Number(n) => NodeData::Number(n),
            ValueData::Boolean(b) => NodeData::Boolean(b),
            ValueData::Null => NodeData::Null,
            ValueData::Date(ms) => NodeData::Date(ms),
        };
        self.nodes.insert(id, Node { parent, data });
        id
    }

    /// Removes the subtree rooted at `id` from the index and returns it detached.
    pub(crate) fn detach(&mut self, id: ElementId) -> Value {
        let node = self.nodes.remove(&id).expect("a child id is always in the index");
        let data = match node.data {
            NodeData::Object(entries) => {
                ValueData::Object(entries.into_iter().map(|(k, c)| (k, self.detach(c))).collect())
            }
            NodeData::Array(items) => {
                ValueData::Array(items.into_iter().map(|c| self.detach(c)).collect())
            }
            NodeData::String(text) => ValueData::String(text.to_string()),
            NodeData::Number(n) => ValueData::Number(n),
            NodeData::Boolean(b) => ValueData::Boolean(b),
            NodeData::Null => ValueData::Null,
            NodeData::Date(ms) => ValueData::Date(ms),
        };
        Value { id, data }
    }

    /// Checks that `values` may enter the document: valid, and no id already present.
    pub(crate) fn check_insertable<'a>(
        &self,
        values: impl IntoIterator<Item = &'a Value>,
    ) -> Result<(), ApplyError> {
        let mut seen = BTreeSet::new();
        for value in values {
            value.validate_into(&mut seen)?;
        }
        match seen.into_iter().find(|id| self.nodes.contains_key(id)) {
            Some(id) => Err(ApplyError::IdInUse(id)),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Document {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Document").field("root", &self.to_value()).finish()
    }
}

impl Serialize for Document {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Document, D::Error> {
        let root = Value::deserialize(deserializer)?;
        Document::new(root).map_err(serde::de::Error::custom)
    }
}
