//! References: shared cursors and selections, and how one moves through an operation so that
//! it points at the same content afterwards. `concord-sync` builds on it: checks against a
//! model, moving back through a client's own changes, and the keeping of references on the
//! server and the clients.

use serde::{Deserialize, Serialize};

use crate::document::Document;
use crate::id::ElementId;
use crate::operation::{DiscreteOperation, OperationKind};

/// What a shared reference points at. Index and range references live on strings, property
/// references on objects, element references on the whole model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReferenceValue {
    Index(Vec<usize>),
    Range(Vec<IndexRange>),
    Property(Vec<String>),
    Element(Vec<ElementId>),
}

/// A selection in a string, in `char`s; `start` may be after `end` (a backward selection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexRange {
    pub start: usize,
    pub end: usize,
}

/// Moves a reference on element `target` across `op`, which applied after the reference was
/// set. `None` means the operation cleared the reference (the string was set as a whole).
///
/// Only string operations move index and range references; property references lose the
/// keys an object operation removed.
pub fn transform_reference(
    op: &DiscreteOperation,
    target: ElementId,
    value: ReferenceValue,
) -> Option<ReferenceValue> {
    if op.noop || op.target != target {
        return Some(value);
    }
    match (&op.kind, value) {
        (OperationKind::StringSplice { index, delete_count, insert }, value) => {
            let inserted = insert.chars().count();
            let map = |p: usize| splice_index(p, *index, *delete_count, inserted);
            Some(match value {
                ReferenceValue::Index(indices) => {
                    ReferenceValue::Index(indices.into_iter().map(map).collect())
                }
                ReferenceValue::Range(ranges) => ReferenceValue::Range(
                    ranges
                        .into_iter()
                        .map(|r| IndexRange { start: map(r.start), end: map(r.end) })
                        .collect(),
                ),
                other => other,
            })
        }
        (OperationKind::StringSet { .. }, ReferenceValue::Index(_) | ReferenceValue::Range(_)) => {
            None
        }
        (OperationKind::ObjectRemoveProperty { key }, ReferenceValue::Property(mut keys)) => {
            keys.retain(|k| k != key);
            Some(ReferenceValue::Property(keys))
        }
        (OperationKind::ObjectSet { values }, ReferenceValue::Property(mut keys)) => {
            keys.retain(|k| values.contains_key(k));
            Some(ReferenceValue::Property(keys))
        }
        (_, value) => Some(value),
    }
}

/// A string index after a splice at `at` removing `deleted` and inserting `inserted` chars.
/// An index inside the removed range collapses to its start; one at `at` moves past the
/// inserted text.
fn splice_index(p: usize, at: usize, deleted: usize, inserted: usize) -> usize {
    if p < at { p } else { (p - (p - at).min(deleted)).saturating_add(inserted) }
}

impl ReferenceValue {
    /// Drops element references to elements no longer in `doc`.
    pub fn retain_existing(self, doc: &Document) -> ReferenceValue {
        match self {
            ReferenceValue::Element(mut ids) => {
                ids.retain(|id| doc.contains(*id));
                ReferenceValue::Element(ids)
            }
            other => other,
        }
    }
}
