//! Shared references (cursors, selections, highlighted properties and elements) as both
//! sides keep them: checked against a model, moved forward through operations so that they
//! keep pointing at the same content, and — for a client's own reference while it has
//! changes the server has not committed — moved back to the confirmed version it is sent at.
//!
//! A reference lives on an element (`ReferenceKey::element`): index and range references on
//! strings, property references on objects; element references on the model itself (no
//! element). A reference whose element is removed is cleared (its value becomes `None`).

use concord_ot::{
    Document, ElementId, IndexRange, Kind, Operation, OperationKind, ReferenceValue,
    transform_reference,
};
use concord_protocol::ReferenceKey;

/// Why a reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    #[error("no element {0} in the model")]
    UnknownElement(ElementId),
    #[error("{what} references need {needs}, and element {element} is {found}")]
    WrongKind { what: &'static str, needs: &'static str, element: ElementId, found: Kind },
    #[error("{what} references live on an element, and this one names none")]
    NoElement { what: &'static str },
    #[error("element references live on the model, not on an element ({0})")]
    ElementOnElement(ElementId),
    #[error("index {index} is past the end of the string ({len} chars)")]
    OutOfRange { index: usize, len: usize },
    #[error("the reference is at version {version}, ahead of the model's {current}")]
    VersionAhead { version: u64, current: u64 },
    #[error(
        "the reference is at version {version}, older than the {oldest} the server can move it from"
    )]
    TooOld { version: u64, oldest: u64 },
}

impl ReferenceError {
    /// The protocol's code for it.
    pub fn code(&self) -> concord_protocol::ErrorCode {
        concord_protocol::ErrorCode::INVALID_REFERENCE
    }
}

fn describe(value: &ReferenceValue) -> &'static str {
    match value {
        ReferenceValue::Index(_) => "index",
        ReferenceValue::Range(_) => "range",
        ReferenceValue::Property(_) => "property",
        ReferenceValue::Element(_) => "element",
    }
}

/// Checks that `value` may be shared as `key` on `doc`: the element exists and has the
/// right kind, indices are within the string, referenced elements exist.
pub fn check(
    doc: &Document,
    key: &ReferenceKey,
    value: &ReferenceValue,
) -> Result<(), ReferenceError> {
    let what = describe(value);
    let target = |needs: &'static str, kind: Kind| -> Result<ElementId, ReferenceError> {
        let element = key.element.ok_or(ReferenceError::NoElement { what })?;
        let found = doc.kind(element).ok_or(ReferenceError::UnknownElement(element))?;
        if found != kind {
            return Err(ReferenceError::WrongKind { what, needs, element, found });
        }
        Ok(element)
    };
    match value {
        ReferenceValue::Index(indices) => {
            let element = target("a string", Kind::String)?;
            let len = doc.text_len(element).unwrap_or(0);
            within(indices.iter().copied(), len)
        }
        ReferenceValue::Range(ranges) => {
            let element = target("a string", Kind::String)?;
            let len = doc.text_len(element).unwrap_or(0);
            within(ranges.iter().flat_map(|r| [r.start, r.end]), len)
        }
        ReferenceValue::Property(_) => target("an object", Kind::Object).map(drop),
        ReferenceValue::Element(ids) => {
            if let Some(element) = key.element {
                return Err(ReferenceError::ElementOnElement(element));
            }
            match ids.iter().find(|id| !doc.contains(**id)) {
                Some(id) => Err(ReferenceError::UnknownElement(*id)),
                None => Ok(()),
            }
        }
    }
}

fn within(mut indices: impl Iterator<Item = usize>, len: usize) -> Result<(), ReferenceError> {
    match indices.find(|i| *i > len) {
        Some(index) => Err(ReferenceError::OutOfRange { index, len }),
        None => Ok(()),
    }
}

/// Moves `value` (of the reference `key`) through `op`; `after` is the model once `op`
/// applied. `None`: the operation cleared it (its element was removed, or its string set as
/// a whole).
pub fn transform(
    key: &ReferenceKey,
    value: ReferenceValue,
    op: &Operation,
    after: &Document,
) -> Option<ReferenceValue> {
    match key.element {
        Some(target) => {
            let mut value = value;
            for part in op.discrete() {
                value = transform_reference(part, target, value)?;
            }
            after.contains(target).then_some(value)
        }
        None => Some(value.retain_existing(after)),
    }
}

/// Whether `op` changes the element the reference `key` lives on.
pub fn touches(key: &ReferenceKey, op: &Operation) -> bool {
    key.element.is_some_and(|target| op.discrete().iter().any(|p| !p.noop && p.target == target))
}

/// Moves `value` back through `op` (which applied after the version it is wanted at):
/// the inverse of [`transform`] where one exists. A position inside text `op` inserted goes
/// to where the insertion began, so that moving it forward again puts it after that text.
/// `None` when it cannot be expressed before `op` (its string was set as a whole).
pub fn untransform(
    key: &ReferenceKey,
    value: ReferenceValue,
    op: &Operation,
) -> Option<ReferenceValue> {
    let Some(target) = key.element else { return Some(value) };
    let mut value = value;
    for part in op.discrete().iter().rev() {
        if part.noop || part.target != target {
            continue;
        }
        value = match (&part.kind, value) {
            (OperationKind::StringSplice { index, delete_count, insert }, value) => {
                let inserted = insert.chars().count();
                let back = |p: usize| unsplice_index(p, *index, *delete_count, inserted);
                match value {
                    ReferenceValue::Index(indices) => {
                        ReferenceValue::Index(indices.into_iter().map(back).collect())
                    }
                    ReferenceValue::Range(ranges) => ReferenceValue::Range(
                        ranges
                            .into_iter()
                            .map(|r| IndexRange { start: back(r.start), end: back(r.end) })
                            .collect(),
                    ),
                    other => other,
                }
            }
            (
                OperationKind::StringSet { .. },
                ReferenceValue::Index(_) | ReferenceValue::Range(_),
            ) => return None,
            (_, value) => value,
        };
    }
    Some(value)
}

/// A string index before a splice at `at` that removed `deleted` and inserted `inserted`
/// chars, from the index after it.
fn unsplice_index(p: usize, at: usize, deleted: usize, inserted: usize) -> usize {
    if p <= at {
        p
    } else if p >= at + inserted {
        p - inserted + deleted
    } else {
        at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use concord_ot::{DiscreteOperation, ReplicaId, Value, ValueData};

    fn doc() -> (Document, ElementId, ElementId) {
        let root = ElementId { replica: ReplicaId(1), counter: 0 };
        let text = ElementId { replica: ReplicaId(1), counter: 1 };
        let string = Value { id: text, data: ValueData::String("hello".into()) };
        let entries = [("t".to_string(), string)].into_iter().collect();
        let value = Value { id: root, data: ValueData::Object(entries) };
        (Document::new(value).unwrap(), root, text)
    }

    fn splice(target: ElementId, index: usize, delete_count: usize, insert: &str) -> Operation {
        Operation::Discrete(DiscreteOperation::new(
            target,
            OperationKind::StringSplice { index, delete_count, insert: insert.into() },
        ))
    }

    #[test]
    fn check_refuses_wrong_kind_unknown_element_and_out_of_range() {
        let (doc, root, text) = doc();
        let on = |element| ReferenceKey { element: Some(element), key: "c".into() };
        assert!(check(&doc, &on(text), &ReferenceValue::Index(vec![0, 5])).is_ok());
        assert_eq!(
            check(&doc, &on(text), &ReferenceValue::Index(vec![6])),
            Err(ReferenceError::OutOfRange { index: 6, len: 5 })
        );
        assert!(matches!(
            check(&doc, &on(root), &ReferenceValue::Index(vec![0])),
            Err(ReferenceError::WrongKind { .. })
        ));
        let missing = ElementId { replica: ReplicaId(9), counter: 9 };
        assert_eq!(
            check(&doc, &on(missing), &ReferenceValue::Property(vec![])),
            Err(ReferenceError::UnknownElement(missing))
        );
        let model = ReferenceKey { element: None, key: "e".into() };
        assert!(check(&doc, &model, &ReferenceValue::Element(vec![text])).is_ok());
        assert!(check(&doc, &model, &ReferenceValue::Element(vec![missing])).is_err());
        assert!(check(&doc, &on(text), &ReferenceValue::Element(vec![text])).is_err());
    }

    #[test]
    fn a_cursor_after_inserted_text_goes_back_and_forward_to_the_same_place() {
        let (_, _, text) = doc();
        let key = ReferenceKey { element: Some(text), key: "c".into() };
        let (mut after, ..) = doc();
        let op = splice(text, 2, 1, "xyz");
        after.apply(&op).unwrap();
        for (cursor, back, forward) in [(0, 0, 0), (2, 2, 5), (3, 2, 5), (5, 3, 5), (7, 5, 7)] {
            let value = ReferenceValue::Index(vec![cursor]);
            let before = untransform(&key, value, &op).unwrap();
            assert_eq!(before, ReferenceValue::Index(vec![back]), "back from {cursor}");
            let again = transform(&key, before, &op, &after).unwrap();
            assert_eq!(again, ReferenceValue::Index(vec![forward]), "forward from {cursor}");
        }
    }

    #[test]
    fn removing_the_element_clears_the_reference() {
        let (mut doc, root, text) = doc();
        let op = Operation::Discrete(DiscreteOperation::new(
            root,
            OperationKind::ObjectRemoveProperty { key: "t".into() },
        ));
        doc.apply(&op).unwrap();
        let key = ReferenceKey { element: Some(text), key: "c".into() };
        assert_eq!(transform(&key, ReferenceValue::Index(vec![1]), &op, &doc), None);
        let model = ReferenceKey { element: None, key: "e".into() };
        let kept = transform(&model, ReferenceValue::Element(vec![root, text]), &op, &doc);
        assert_eq!(kept, Some(ReferenceValue::Element(vec![root])));
    }
}
