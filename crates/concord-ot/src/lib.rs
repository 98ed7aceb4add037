//! `concord-ot` is Concord's data model and operational-transformation core.
//!
//! A model is a tree of JSON-like values whose root is an object; every node carries an
//! [`ElementId`]. A [`Document`] stores the tree indexed by id; [`Operation`]s address
//! elements by id and [`Document::apply`] applies them all or nothing, returning what
//! changed ([`Applied`]). [`transform`] makes two concurrent operations commute (TP1), and
//! [`transform_reference`] keeps shared cursors and selections in place.
//!
//! This crate is not the sync engine and does no I/O: no sockets, no storage, no clock, no
//! async, no randomness. Serialization is derived (serde) so that the protocol and the store
//! can carry these types, but choosing a format is their business.

mod apply;
mod document;
mod id;
mod operation;
mod reference;
mod text;
mod transform;
mod value;

pub use apply::{Applied, ApplyError, Old, SkipReason};
pub use document::{Document, PathSegment};
pub use id::{ElementId, IdGenerator, ReplicaId};
pub use operation::{DiscreteOperation, Operation, OperationKind};
pub use reference::{IndexRange, ReferenceValue, transform_reference};
pub use transform::{transform, transform_discrete};
pub use value::{Kind, Value, ValueData, ValueError};
