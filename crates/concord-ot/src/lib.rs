//! `concord-ot` is Concord's data model and operational-transformation core.
//!
//! A model is a tree of JSON-like values whose root is an object; every node carries an
//! [`ElementId`]. A [`Document`] stores the tree indexed by id; [`Operation`]s address
//! elements by id and [`Document::apply`] applies them all or nothing, returning what
//! changed ([`Applied`]); [`compose`] folds two operations into one. [`transform`] makes two concurrent operations commute (TP1), and
//! [`transform_reference`] moves a shared reference (a cursor, a selection) through an
//! operation (`concord-sync` moves references with it on the server and the clients).
//!
//! This crate is not the sync engine and does no I/O: no sockets, no storage, no clock, no
//! async, no randomness. Serialization is derived (serde) so that the protocol and the store
//! can carry these types, but choosing a format is their business.
//!
//! ```
//! use concord_ot::{
//!     DiscreteOperation, Document, IdGenerator, Operation, OperationKind, PathSegment,
//!     ReplicaId, Value, transform,
//! };
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut ids = IdGenerator::new(ReplicaId(7), 0);
//! let mut doc = Document::new(Value::from_json(&serde_json::json!({"title": "hello"}), &mut ids)?)?;
//! let title = doc.element_at(&[PathSegment::Key("title".into())]).unwrap();
//! let insert = |index, text: &str| -> Operation {
//!     let kind = OperationKind::StringSplice { index, delete_count: 0, insert: text.into() };
//!     DiscreteOperation::new(title, kind).into()
//! };
//! // Two concurrent edits; the server ordered `ours` first.
//! let (ours, theirs) = (insert(5, "!"), insert(0, "Oh, "));
//! let (_, theirs_after_ours) = transform(ours.clone(), theirs);
//! doc.apply(&ours)?;
//! doc.apply(&theirs_after_ours)?;
//! assert_eq!(doc.text(title).as_deref(), Some("Oh, hello!"));
//! # Ok(())
//! # }
//! ```

mod apply;
mod compose;
mod document;
mod id;
mod operation;
mod reference;
mod rope;
mod text;
mod transform;
mod value;

pub use apply::{Applied, ApplyError, Old, SkipReason};
pub use compose::compose;
pub use document::{Document, PathSegment};
pub use id::{ElementId, IdGenerator, ReplicaId};
pub use operation::{DiscreteOperation, Operation, OperationKind};
pub use reference::{IndexRange, ReferenceValue, transform_reference};
pub use transform::{transform, transform_discrete};
pub use value::{Kind, Value, ValueData, ValueError};
