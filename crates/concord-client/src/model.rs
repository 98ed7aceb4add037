//! [`RealTimeModel`] and its element handles. Handles name an element by id, so they stay
//! valid while other sessions edit around it; every read and change goes to the domain's
//! task, which applies changes to the local view at once and syncs them in the background.

use std::sync::Arc;

use concord_ot::{
    DiscreteOperation, Document, ElementId, IdGenerator, Kind, Operation, OperationKind,
    PathSegment, Value,
};
use concord_protocol::{CollectionId, ModelId, SessionId, UserId};
use concord_sync::{ModelEvent, ModelReplica};
use tokio::sync::{oneshot, watch};

use crate::domain::Domain;
use crate::driver::{Command, Opened};
use crate::error::ClientError;
use crate::events::{Events, ModelChannel};

/// How far a model's local changes got: numbered by the change's seq (see [`Change`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watermarks {
    /// The last local change made.
    pub last: u64,
    /// Every change up to here is in the offline store.
    pub stored: u64,
    /// Every change up to here was acknowledged by the server.
    pub acknowledged: u64,
}

/// A local change, to wait for with [`RealTimeModel::acknowledged`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub seq: u64,
}

/// The model's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub id: ModelId,
    pub collection: CollectionId,
    /// The server version the local copy includes.
    pub version: u64,
    pub created_at: i64,
    pub modified_at: i64,
}

#[derive(Debug)]
struct Shared {
    domain: Domain,
    id: ModelId,
    collection: CollectionId,
    root: ElementId,
    events: ModelChannel<ModelEvent>,
    watermarks: watch::Receiver<Watermarks>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.domain.send_now(Command::Close { model: self.id.clone() });
    }
}

/// An open model. Clones share one handle; the model is closed when the last is dropped
/// (or [`RealTimeModel::close`] is called).
#[derive(Debug, Clone)]
pub struct RealTimeModel {
    shared: Arc<Shared>,
}

impl RealTimeModel {
    pub(crate) fn new(domain: Domain, id: ModelId, opened: Opened) -> RealTimeModel {
        RealTimeModel {
            shared: Arc::new(Shared {
                domain,
                id,
                collection: opened.collection,
                root: opened.root,
                events: opened.events,
                watermarks: opened.watermarks,
            }),
        }
    }

    pub fn id(&self) -> &ModelId {
        &self.shared.id
    }

    pub(crate) fn domain(&self) -> &Domain {
        &self.shared.domain
    }

    pub fn collection(&self) -> &CollectionId {
        &self.shared.collection
    }

    /// Runs `read` on the model's local state in the domain's task.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&ModelReplica) -> T + Send + 'static,
    ) -> Result<T, ClientError> {
        let (reply, answer) = oneshot::channel();
        let read = Box::new(move |replica: &ModelReplica| {
            let _ = reply.send(read(replica));
        });
        self.shared.domain.send(Command::Read { model: self.shared.id.clone(), read }).await?;
        answer.await.map_err(|_| ClientError::NotOpen(self.shared.id.clone()))
    }

    async fn edit(
        &self,
        build: impl FnOnce(&Document, &mut IdGenerator) -> Result<Operation, ClientError>
        + Send
        + 'static,
    ) -> Result<Change, ClientError> {
        let model = self.shared.id.clone();
        let build = Box::new(build);
        let seq = self.shared.domain.call(|reply| Command::Edit { model, build, reply }).await?;
        Ok(Change { seq })
    }

    pub async fn info(&self) -> Result<ModelInfo, ClientError> {
        let id = self.shared.id.clone();
        self.read(move |replica| {
            let confirmed = replica.confirmed();
            ModelInfo {
                id,
                collection: confirmed.collection.clone(),
                version: confirmed.version,
                created_at: confirmed.created_at.0,
                modified_at: confirmed.modified_at.0,
            }
        })
        .await
    }

    /// The server version the local copy includes.
    pub async fn version(&self) -> Result<u64, ClientError> {
        self.read(ModelReplica::confirmed_version).await
    }

    /// The whole local view as JSON (dates as `{"$date": ms}`).
    pub async fn value(&self) -> Result<serde_json::Value, ClientError> {
        self.read(|replica| replica.local().to_json()).await
    }

    pub fn root(&self) -> RealTimeObject {
        RealTimeObject(Element { model: self.clone(), id: self.shared.root, kind: Kind::Object })
    }

    /// The element at `path` now, if there is one.
    pub async fn element_at(&self, path: &[PathSegment]) -> Result<Option<Element>, ClientError> {
        let path = path.to_vec();
        let model = self.clone();
        self.read(move |replica| {
            let document = replica.local();
            document.element_at(&path).and_then(|id| {
                document.kind(id).map(|kind| Element { model: model.clone(), id, kind })
            })
        })
        .await
    }

    /// The element with `id` in the local view now, if it exists (ids appear in events
    /// and references).
    pub async fn element(&self, id: ElementId) -> Result<Option<Element>, ClientError> {
        let model = self.clone();
        self.read(move |replica| {
            replica.local().kind(id).map(|kind| Element { model: model.clone(), id, kind })
        })
        .await
    }

    /// Several changes as one: built in order against the local view, applied and sent
    /// together, all or nothing.
    pub async fn batch(
        &self,
        build: impl FnOnce(&mut BatchBuilder) -> Result<(), ClientError> + Send + 'static,
    ) -> Result<Change, ClientError> {
        self.edit(move |document, ids| {
            let mut batch =
                BatchBuilder { document: document.clone(), ids, operations: Vec::new() };
            build(&mut batch)?;
            Ok(Operation::Compound(batch.operations))
        })
        .await
    }

    /// This model's events from now on.
    pub fn events(&self) -> Events<ModelEvent> {
        self.shared.events.subscribe()
    }

    pub fn watermarks(&self) -> Watermarks {
        *self.shared.watermarks.borrow()
    }

    /// Resolves once `change` (and every change before it) is in the offline store. Fails
    /// with [`ClientError::Closed`] if the domain stops first: closed, or its store failed
    /// (`DomainEvent::StorageFailed`; the change may then be stored or not).
    pub async fn stored(&self, change: Change) -> Result<(), ClientError> {
        let mut watch = self.shared.watermarks.clone();
        watch
            .wait_for(|w| w.stored >= change.seq)
            .await
            .map(|_| ())
            .map_err(|_| ClientError::Closed)
    }

    /// Resolves once the server acknowledged `change` (and every change before it). Fails
    /// with [`ClientError::Closed`] if the domain stops first.
    pub async fn acknowledged(&self, change: Change) -> Result<(), ClientError> {
        let mut watch = self.shared.watermarks.clone();
        watch
            .wait_for(|w| w.acknowledged >= change.seq)
            .await
            .map(|_| ())
            .map_err(|_| ClientError::Closed)
    }

    /// Closes this handle (the model stays open while clones of it exist).
    pub fn close(self) {}
}

/// Builds the changes of one [`RealTimeModel::batch`].
pub struct BatchBuilder<'a> {
    document: Document,
    ids: &'a mut IdGenerator,
    operations: Vec<DiscreteOperation>,
}

impl std::fmt::Debug for BatchBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchBuilder").field("operations", &self.operations.len()).finish()
    }
}

impl BatchBuilder<'_> {
    /// Adds a change to `element`, as one of the element handles would make it.
    pub fn change(&mut self, element: &Element, change: Edit) -> Result<(), ClientError> {
        let op = change.build(&self.document, element.id, self.ids)?;
        self.document.apply_discrete_without_old(&op)?;
        self.operations.push(op);
        Ok(())
    }

    /// The state the batch has built so far.
    pub fn document(&self) -> &Document {
        &self.document
    }
}

/// A change to one element, for [`BatchBuilder::change`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Edit {
    ObjectSet {
        key: String,
        value: serde_json::Value,
    },
    ObjectRemove {
        key: String,
    },
    ArrayInsert {
        index: usize,
        value: serde_json::Value,
    },
    ArrayRemove {
        index: usize,
    },
    ArrayReplace {
        index: usize,
        value: serde_json::Value,
    },
    ArrayMove {
        from: usize,
        to: usize,
    },
    /// Replaces the whole array.
    ArraySetValue {
        values: Vec<serde_json::Value>,
    },
    /// Replaces the whole object.
    ObjectSetValue {
        values: serde_json::Map<String, serde_json::Value>,
    },
    StringSplice {
        index: usize,
        delete: usize,
        insert: String,
    },
    StringSet {
        value: String,
    },
    NumberAdd {
        delta: f64,
    },
    NumberSet {
        value: f64,
    },
    BooleanSet {
        value: bool,
    },
    DateSet {
        millis: i64,
    },
}

fn value(json: &serde_json::Value, ids: &mut IdGenerator) -> Result<Value, ClientError> {
    Value::from_json(json, ids).map_err(|e| ClientError::InvalidValue(e.to_string()))
}

pub(crate) fn expect(
    document: &Document,
    id: ElementId,
    expected: Kind,
) -> Result<(), ClientError> {
    match document.kind(id) {
        None => Err(ClientError::NoSuchElement),
        Some(kind) if kind == expected => Ok(()),
        Some(kind) => {
            Err(ClientError::WrongKind { expected: name(expected), found: kind.to_string() })
        }
    }
}

fn name(kind: Kind) -> &'static str {
    match kind {
        Kind::Object => "object",
        Kind::Array => "array",
        Kind::String => "string",
        Kind::Number => "number",
        Kind::Boolean => "boolean",
        Kind::Null => "null",
        Kind::Date => "date",
    }
}

impl Edit {
    fn build(
        self,
        document: &Document,
        target: ElementId,
        ids: &mut IdGenerator,
    ) -> Result<DiscreteOperation, ClientError> {
        let (kind, operation) = match self {
            Edit::ObjectSet { key, value: json } => {
                let value = value(&json, ids)?;
                let exists = document.object_entries(target).is_some_and(|e| e.contains_key(&key));
                let op = if exists {
                    OperationKind::ObjectSetProperty { key, value }
                } else {
                    OperationKind::ObjectAddProperty { key, value }
                };
                (Kind::Object, op)
            }
            Edit::ObjectRemove { key } => {
                (Kind::Object, OperationKind::ObjectRemoveProperty { key })
            }
            Edit::ArrayInsert { index, value: json } => {
                (Kind::Array, OperationKind::ArrayInsert { index, value: value(&json, ids)? })
            }
            Edit::ArrayRemove { index } => (Kind::Array, OperationKind::ArrayRemove { index }),
            Edit::ArrayReplace { index, value: json } => {
                (Kind::Array, OperationKind::ArrayReplace { index, value: value(&json, ids)? })
            }
            Edit::ArrayMove { from, to } => (Kind::Array, OperationKind::ArrayMove { from, to }),
            Edit::ArraySetValue { values } => {
                let values = values.iter().map(|v| value(v, ids)).collect::<Result<_, _>>()?;
                (Kind::Array, OperationKind::ArraySet { values })
            }
            Edit::ObjectSetValue { values } => {
                let values = values
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), value(v, ids)?)))
                    .collect::<Result<_, ClientError>>()?;
                (Kind::Object, OperationKind::ObjectSet { values })
            }
            Edit::StringSplice { index, delete, insert } => {
                (Kind::String, OperationKind::StringSplice { index, delete_count: delete, insert })
            }
            Edit::StringSet { value } => (Kind::String, OperationKind::StringSet { value }),
            Edit::NumberAdd { delta } => (Kind::Number, OperationKind::NumberDelta { delta }),
            Edit::NumberSet { value } => (Kind::Number, OperationKind::NumberSet { value }),
            Edit::BooleanSet { value } => (Kind::Boolean, OperationKind::BooleanSet { value }),
            Edit::DateSet { millis } => (Kind::Date, OperationKind::DateSet { value: millis }),
        };
        expect(document, target, kind)?;
        Ok(DiscreteOperation::new(target, operation))
    }
}

/// An element of a model, of any kind; [`Element::as_object`] and its siblings give the
/// typed handle.
#[derive(Debug, Clone)]
pub struct Element {
    model: RealTimeModel,
    id: ElementId,
    kind: Kind,
}

macro_rules! typed {
    ($(#[$doc:meta])* $name:ident, $as:ident, $kind:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $name(Element);

        impl $name {
            pub fn element(&self) -> &Element {
                &self.0
            }

            pub fn id(&self) -> ElementId {
                self.0.id
            }

            /// This element's value now, as JSON.
            pub async fn json(&self) -> Result<serde_json::Value, ClientError> {
                self.0.json().await
            }

            /// This element's events (changes to it) from now on.
            pub fn events(&self) -> ElementEvents {
                self.0.events()
            }
        }

        impl Element {
            pub fn $as(&self) -> Result<$name, ClientError> {
                if self.kind == Kind::$kind {
                    Ok($name(self.clone()))
                } else {
                    Err(ClientError::WrongKind { expected: name(Kind::$kind), found: self.kind.to_string() })
                }
            }
        }
    };
}

typed!(
    /// An object element: keys mapping to elements.
    RealTimeObject, as_object, Object
);
typed!(
    /// An array element.
    RealTimeArray, as_array, Array
);
typed!(
    /// A string element; positions count Unicode scalar values (`char`s).
    RealTimeString, as_string, String
);
typed!(
    /// A number element (f64).
    RealTimeNumber, as_number, Number
);
typed!(
    /// A boolean element.
    RealTimeBoolean, as_boolean, Boolean
);
typed!(
    /// A date element (milliseconds since the Unix epoch, UTC).
    RealTimeDate, as_date, Date
);
typed!(
    /// A null element.
    RealTimeNull, as_null, Null
);

impl Element {
    pub fn id(&self) -> ElementId {
        self.id
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn model(&self) -> &RealTimeModel {
        &self.model
    }

    pub async fn json(&self) -> Result<serde_json::Value, ClientError> {
        let id = self.id;
        self.model
            .read(move |replica| replica.local().value(id).map(|v| v.to_json()))
            .await?
            .ok_or(ClientError::NoSuchElement)
    }

    async fn change(&self, edit: Edit) -> Result<Change, ClientError> {
        let target = self.id;
        self.model
            .edit(move |document, ids| Ok(Operation::Discrete(edit.build(document, target, ids)?)))
            .await
    }

    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Document, ElementId) -> Option<T> + Send + 'static,
    ) -> Result<T, ClientError> {
        let id = self.id;
        self.model
            .read(move |replica| read(replica.local(), id))
            .await?
            .ok_or(ClientError::NoSuchElement)
    }

    async fn child(
        &self,
        find: impl FnOnce(&Document, ElementId) -> Option<ElementId> + Send + 'static,
    ) -> Result<Option<Element>, ClientError> {
        let model = self.model.clone();
        let id = self.id;
        self.model
            .read(move |replica| {
                let document = replica.local();
                find(document, id).and_then(|child| {
                    document.kind(child).map(|kind| Element { model, id: child, kind })
                })
            })
            .await
    }

    pub fn events(&self) -> ElementEvents {
        ElementEvents { events: self.model.events(), element: self.id }
    }
}

/// The changes of one element.
#[derive(Debug)]
pub struct ElementEvents {
    events: Events<ModelEvent>,
    element: ElementId,
}

impl ElementEvents {
    /// The next change of the element.
    pub async fn next(&mut self) -> Option<ElementChange> {
        loop {
            match self.events.next().await? {
                ModelEvent::Changed { element, operation, author, user }
                    if element == self.element =>
                {
                    return Some(ElementChange { operation, author, user });
                }
                _ => {}
            }
        }
    }
}

/// One change of an element, as its events report it.
#[derive(Debug, Clone, PartialEq)]
pub struct ElementChange {
    pub operation: OperationKind,
    /// The session that made it (`None`: this client).
    pub author: Option<SessionId>,
    /// The author's user, when the client knows it (as in `ModelEvent::Changed`).
    pub user: Option<UserId>,
}

impl RealTimeObject {
    pub async fn get(&self, key: &str) -> Result<Option<Element>, ClientError> {
        let key = key.to_owned();
        self.0.child(move |d, id| d.object_entries(id)?.get(&key).copied()).await
    }

    pub async fn keys(&self) -> Result<Vec<String>, ClientError> {
        self.0.read(|d, id| Some(d.object_entries(id)?.keys().cloned().collect())).await
    }

    /// Sets `key` to `value` (adding it if missing).
    pub async fn set(&self, key: &str, value: serde_json::Value) -> Result<Change, ClientError> {
        self.0.change(Edit::ObjectSet { key: key.to_owned(), value }).await
    }

    pub async fn remove(&self, key: &str) -> Result<Change, ClientError> {
        self.0.change(Edit::ObjectRemove { key: key.to_owned() }).await
    }

    /// Replaces the whole object with `values`.
    pub async fn set_value(
        &self,
        values: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Change, ClientError> {
        self.0.change(Edit::ObjectSetValue { values }).await
    }
}

impl RealTimeArray {
    pub async fn len(&self) -> Result<usize, ClientError> {
        self.0.read(|d, id| d.array_len(id)).await
    }

    pub async fn is_empty(&self) -> Result<bool, ClientError> {
        Ok(self.len().await? == 0)
    }

    pub async fn get(&self, index: usize) -> Result<Option<Element>, ClientError> {
        self.0.child(move |d, id| d.array_items(id)?.get(index).copied()).await
    }

    pub async fn insert(
        &self,
        index: usize,
        value: serde_json::Value,
    ) -> Result<Change, ClientError> {
        self.0.change(Edit::ArrayInsert { index, value }).await
    }

    /// Appends `value` at the end the local view has now.
    pub async fn push(&self, value: serde_json::Value) -> Result<Change, ClientError> {
        let target = self.0.id;
        self.0
            .model
            .edit(move |document, ids| {
                let index = document.array_len(target).ok_or(ClientError::NoSuchElement)?;
                Ok(Operation::Discrete(
                    Edit::ArrayInsert { index, value }.build(document, target, ids)?,
                ))
            })
            .await
    }

    pub async fn remove(&self, index: usize) -> Result<Change, ClientError> {
        self.0.change(Edit::ArrayRemove { index }).await
    }

    pub async fn replace(
        &self,
        index: usize,
        value: serde_json::Value,
    ) -> Result<Change, ClientError> {
        self.0.change(Edit::ArrayReplace { index, value }).await
    }

    pub async fn move_item(&self, from: usize, to: usize) -> Result<Change, ClientError> {
        self.0.change(Edit::ArrayMove { from, to }).await
    }

    /// Replaces the whole array with `values`.
    pub async fn set_value(&self, values: Vec<serde_json::Value>) -> Result<Change, ClientError> {
        self.0.change(Edit::ArraySetValue { values }).await
    }
}

impl RealTimeString {
    pub async fn value(&self) -> Result<String, ClientError> {
        self.0.read(|d, id| d.text(id)).await
    }

    /// Its length in `char`s.
    pub async fn len(&self) -> Result<usize, ClientError> {
        self.0.read(|d, id| d.text_len(id)).await
    }

    pub async fn is_empty(&self) -> Result<bool, ClientError> {
        Ok(self.len().await? == 0)
    }

    pub async fn insert(&self, index: usize, text: &str) -> Result<Change, ClientError> {
        self.splice(index, 0, text).await
    }

    pub async fn remove(&self, index: usize, count: usize) -> Result<Change, ClientError> {
        self.splice(index, count, "").await
    }

    pub async fn splice(
        &self,
        index: usize,
        delete: usize,
        insert: &str,
    ) -> Result<Change, ClientError> {
        self.0.change(Edit::StringSplice { index, delete, insert: insert.to_owned() }).await
    }

    pub async fn set(&self, value: &str) -> Result<Change, ClientError> {
        self.0.change(Edit::StringSet { value: value.to_owned() }).await
    }
}

impl RealTimeNumber {
    pub async fn value(&self) -> Result<f64, ClientError> {
        self.0.json().await?.as_f64().ok_or(ClientError::NoSuchElement)
    }

    pub async fn add(&self, delta: f64) -> Result<Change, ClientError> {
        self.0.change(Edit::NumberAdd { delta }).await
    }

    pub async fn set(&self, value: f64) -> Result<Change, ClientError> {
        self.0.change(Edit::NumberSet { value }).await
    }
}

impl RealTimeBoolean {
    pub async fn value(&self) -> Result<bool, ClientError> {
        self.0.json().await?.as_bool().ok_or(ClientError::NoSuchElement)
    }

    pub async fn set(&self, value: bool) -> Result<Change, ClientError> {
        self.0.change(Edit::BooleanSet { value }).await
    }
}

impl RealTimeDate {
    /// Milliseconds since the Unix epoch.
    pub async fn value(&self) -> Result<i64, ClientError> {
        let json = self.0.json().await?;
        json.get("$date").and_then(serde_json::Value::as_i64).ok_or(ClientError::NoSuchElement)
    }

    pub async fn set(&self, millis: i64) -> Result<Change, ClientError> {
        self.0.change(Edit::DateSet { millis }).await
    }
}
