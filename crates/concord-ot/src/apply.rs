//! Applying operations to a document: validate, change, and report what changed.

use std::collections::BTreeMap;

use crate::document::{Document, NodeData};
use crate::id::ElementId;
use crate::operation::{DiscreteOperation, Operation, OperationKind};
use crate::value::{Kind, Value, ValueError};

/// Why an operation cannot apply. The document is unchanged when this is returned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ApplyError {
    #[error("element {target} is {found}, the operation needs {expected}")]
    WrongKind { target: ElementId, expected: Kind, found: Kind },
    #[error("index {index} is out of range for element {target} of length {len}")]
    IndexOutOfRange { target: ElementId, index: usize, len: usize },
    #[error("range {index}..{index}+{count} is out of range for element {target} of length {len}")]
    RangeOutOfRange { target: ElementId, index: usize, count: usize, len: usize },
    #[error("object {target} already has property {key:?}")]
    KeyExists { target: ElementId, key: String },
    #[error("object {target} has no property {key:?}")]
    KeyMissing { target: ElementId, key: String },
    #[error("element id {0} is already in the model")]
    IdInUse(ElementId),
    #[error("number element {target} would become {value}, which is not finite")]
    NonFiniteResult { target: ElementId, value: f64 },
    #[error(transparent)]
    InvalidValue(#[from] ValueError),
    #[error("operation {position} of the compound: {source}")]
    InCompound { position: usize, source: Box<ApplyError> },
}

/// What applying one discrete operation did: what events need, and what an inverse needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The document changed; `old` holds what the operation overwrote or removed.
    Changed { old: Old },
    /// Nothing changed.
    Skipped(SkipReason),
}

/// Why an operation applied as a no-op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// The operation carries the no-op flag (transformation neutralised it).
    Flagged,
    /// Its target is no longer in the model (a concurrent change removed it).
    TargetMissing,
}

/// The state an operation replaced, enough to invert it exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum Old {
    /// Insertions (array insert, object add property) and moves overwrite nothing.
    Nothing,
    /// A splice's deleted text, or a string set's previous content.
    Text(String),
    /// The element removed or replaced by an array remove/replace or an object set/remove
    /// property.
    Value(Value),
    /// An array set's previous items.
    Items(Vec<Value>),
    /// An object set's previous properties.
    Properties(BTreeMap<String, Value>),
    Number(f64),
    Boolean(bool),
    Date(i64),
}

impl Applied {
    pub fn is_skipped(&self) -> bool {
        matches!(self, Applied::Skipped(_))
    }

    /// The operation that exactly undoes `op`, which produced `self`; `None` for a skip.
    ///
    /// A number delta inverts to a number set of the old value, so the undo is exact even
    /// where floating-point addition is not.
    pub fn inverse(&self, op: &DiscreteOperation) -> Option<DiscreteOperation> {
        use OperationKind::*;
        let Applied::Changed { old } = self else {
            return None;
        };
        let kind = match (&op.kind, old) {
            (StringSplice { index, insert, .. }, Old::Text(deleted)) => StringSplice {
                index: *index,
                delete_count: insert.chars().count(),
                insert: deleted.clone(),
            },
            (StringSet { .. }, Old::Text(old)) => StringSet { value: old.clone() },
            (ArrayInsert { index, .. }, Old::Nothing) => ArrayRemove { index: *index },
            (ArrayRemove { index }, Old::Value(old)) => {
                ArrayInsert { index: *index, value: old.clone() }
            }
            (ArrayReplace { index, .. }, Old::Value(old)) => {
                ArrayReplace { index: *index, value: old.clone() }
            }
            (ArrayMove { from, to }, Old::Nothing) => ArrayMove { from: *to, to: *from },
            (ArraySet { .. }, Old::Items(old)) => ArraySet { values: old.clone() },
            (ObjectAddProperty { key, .. }, Old::Nothing) => {
                ObjectRemoveProperty { key: key.clone() }
            }
            (ObjectSetProperty { key, .. }, Old::Value(old)) => {
                ObjectSetProperty { key: key.clone(), value: old.clone() }
            }
            (ObjectRemoveProperty { key }, Old::Value(old)) => {
                ObjectAddProperty { key: key.clone(), value: old.clone() }
            }
            (ObjectSet { .. }, Old::Properties(old)) => ObjectSet { values: old.clone() },
            (NumberDelta { .. } | NumberSet { .. }, Old::Number(old)) => NumberSet { value: *old },
            (BooleanSet { .. }, Old::Boolean(old)) => BooleanSet { value: *old },
            (DateSet { .. }, Old::Date(old)) => DateSet { value: *old },
            _ => return None,
        };
        Some(DiscreteOperation::new(op.target, kind))
    }
}

/// Whether a splice reads back the text it deletes (for [`Old::Text`]).
#[derive(Clone, Copy)]
enum KeepDeleted {
    Yes,
    No,
}

impl Document {
    /// Applies `op`: every part, or — when one fails — none.
    ///
    /// Returns one [`Applied`] per discrete operation, in order.
    pub fn apply(&mut self, op: &Operation) -> Result<Vec<Applied>, ApplyError> {
        match op {
            Operation::Discrete(op) => Ok(vec![self.apply_discrete(op)?]),
            Operation::Compound(ops) => self.apply_compound(ops),
        }
    }

    /// Applies `op` like [`Document::apply`] but keeps nothing of what it overwrote: for
    /// callers that neither undo nor raise events (a replica's confirmed copy, replays).
    /// A splice then skips reading its deleted text back, the one old value that costs a
    /// second walk of the rope. A compound still records, to roll back a failed part.
    pub fn apply_without_old(&mut self, op: &Operation) -> Result<(), ApplyError> {
        match op {
            Operation::Discrete(op) => self.apply_discrete_without_old(op),
            Operation::Compound(ops) => self.apply_compound(ops).map(drop),
        }
    }

    /// [`Document::apply_without_old`] for one discrete operation.
    pub fn apply_discrete_without_old(&mut self, op: &DiscreteOperation) -> Result<(), ApplyError> {
        match &op.kind {
            OperationKind::StringSplice { index, delete_count, insert } if !op.noop => {
                self.splice(op.target, *index, *delete_count, insert, KeepDeleted::No).map(drop)
            }
            _ => self.apply_discrete(op).map(drop),
        }
    }

    fn apply_compound(&mut self, ops: &[DiscreteOperation]) -> Result<Vec<Applied>, ApplyError> {
        let mut applied = Vec::with_capacity(ops.len());
        for (position, op) in ops.iter().enumerate() {
            match self.apply_discrete(op) {
                Ok(outcome) => applied.push(outcome),
                Err(error) => {
                    self.roll_back(&ops[..position], &applied);
                    return Err(ApplyError::InCompound { position, source: Box::new(error) });
                }
            }
        }
        Ok(applied)
    }

    /// Undoes `ops`, which were applied with outcomes `applied`, last first.
    fn roll_back(&mut self, ops: &[DiscreteOperation], applied: &[Applied]) {
        for (op, outcome) in ops.iter().zip(applied).rev() {
            if let Some(inverse) = outcome.inverse(op) {
                self.apply_discrete(&inverse).expect("the inverse of an applied operation applies");
            }
        }
    }

    /// Applies one discrete operation; on error the document is unchanged.
    pub fn apply_discrete(&mut self, op: &DiscreteOperation) -> Result<Applied, ApplyError> {
        if op.noop {
            return Ok(Applied::Skipped(SkipReason::Flagged));
        }
        let target = op.target;
        // The hot path of text editing: one lookup, no value checks.
        if let OperationKind::StringSplice { index, delete_count, insert } = &op.kind {
            return self.splice(target, *index, *delete_count, insert, KeepDeleted::Yes);
        }
        let Some(node) = self.nodes.get(&target) else {
            return Ok(Applied::Skipped(SkipReason::TargetMissing));
        };
        let expected = op.kind.target_kind();
        let found = node.data.kind();
        if expected != found {
            return Err(ApplyError::WrongKind { target, expected, found });
        }
        if op.kind.inserts_values() {
            self.check_insertable(op.kind.inserted_values())?;
        }
        let old = match &op.kind {
            OperationKind::StringSplice { .. } => unreachable!("handled above"),
            OperationKind::StringSet { value } => {
                let text = self.text_mut(target);
                let old = text.to_string();
                text.set(value);
                Old::Text(old)
            }
            OperationKind::ArrayInsert { index, value } => {
                let len = self.items_mut(target).len();
                if *index > len {
                    return Err(ApplyError::IndexOutOfRange { target, index: *index, len });
                }
                let child = self.attach(value.clone(), Some(target));
                self.items_mut(target).insert(*index, child);
                Old::Nothing
            }
            OperationKind::ArrayRemove { index } => {
                let child = self.item_at(target, *index)?;
                self.items_mut(target).remove(*index);
                Old::Value(self.detach(child))
            }
            OperationKind::ArrayReplace { index, value } => {
                let child = self.item_at(target, *index)?;
                let old = self.detach(child);
                let new = self.attach(value.clone(), Some(target));
                self.items_mut(target)[*index] = new;
                Old::Value(old)
            }
            OperationKind::ArrayMove { from, to } => {
                let child = self.item_at(target, *from)?;
                self.item_at(target, *to)?;
                let items = self.items_mut(target);
                items.remove(*from);
                items.insert(*to, child);
                Old::Nothing
            }
            OperationKind::ArraySet { values } => {
                let old = std::mem::take(self.items_mut(target));
                let old = old.into_iter().map(|c| self.detach(c)).collect();
                let new = values.iter().map(|v| self.attach(v.clone(), Some(target))).collect();
                *self.items_mut(target) = new;
                Old::Items(old)
            }
            OperationKind::ObjectAddProperty { key, value } => {
                if self.entries_mut(target).contains_key(key) {
                    return Err(ApplyError::KeyExists { target, key: key.clone() });
                }
                let child = self.attach(value.clone(), Some(target));
                self.entries_mut(target).insert(key.clone(), child);
                Old::Nothing
            }
            OperationKind::ObjectSetProperty { key, value } => {
                let child = self.property(target, key)?;
                let old = self.detach(child);
                let new = self.attach(value.clone(), Some(target));
                self.entries_mut(target).insert(key.clone(), new);
                Old::Value(old)
            }
            OperationKind::ObjectRemoveProperty { key } => {
                let child = self.property(target, key)?;
                self.entries_mut(target).remove(key);
                Old::Value(self.detach(child))
            }
            OperationKind::ObjectSet { values } => {
                let old = std::mem::take(self.entries_mut(target));
                let old = old.into_iter().map(|(k, c)| (k, self.detach(c))).collect();
                let new = values
                    .iter()
                    .map(|(k, v)| (k.clone(), self.attach(v.clone(), Some(target))))
                    .collect();
                *self.entries_mut(target) = new;
                Old::Properties(old)
            }
            OperationKind::NumberDelta { delta } => {
                let number = self.number_mut(target);
                let old = *number;
                let value = old + delta;
                if !value.is_finite() {
                    return Err(ApplyError::NonFiniteResult { target, value });
                }
                *number = value;
                Old::Number(old)
            }
            OperationKind::NumberSet { value } => {
                if !value.is_finite() {
                    return Err(ApplyError::NonFiniteResult { target, value: *value });
                }
                Old::Number(std::mem::replace(self.number_mut(target), *value))
            }
            OperationKind::BooleanSet { value } => match &mut self.node_mut(target).data {
                NodeData::Boolean(b) => Old::Boolean(std::mem::replace(b, *value)),
                _ => unreachable!("kind checked above"),
            },
            OperationKind::DateSet { value } => match &mut self.node_mut(target).data {
                NodeData::Date(ms) => Old::Date(std::mem::replace(ms, *value)),
                _ => unreachable!("kind checked above"),
            },
        };
        Ok(Applied::Changed { old })
    }

    fn splice(
        &mut self,
        target: ElementId,
        index: usize,
        count: usize,
        insert: &str,
        keep: KeepDeleted,
    ) -> Result<Applied, ApplyError> {
        let Some(node) = self.nodes.get_mut(&target) else {
            return Ok(Applied::Skipped(SkipReason::TargetMissing));
        };
        let NodeData::String(text) = &mut node.data else {
            let found = node.data.kind();
            return Err(ApplyError::WrongKind { target, expected: Kind::String, found });
        };
        let len = text.len_chars();
        let end = index.checked_add(count).filter(|end| *end <= len);
        let Some(end) = end else {
            return Err(ApplyError::RangeOutOfRange { target, index, count, len });
        };
        let deleted = match keep {
            KeepDeleted::Yes if count > 0 => text.slice(index..end),
            _ => String::new(),
        };
        text.splice(index..end, insert);
        Ok(Applied::Changed { old: Old::Text(deleted) })
    }

    fn node_mut(&mut self, id: ElementId) -> &mut crate::document::Node {
        self.nodes.get_mut(&id).expect("target checked present")
    }

    fn text_mut(&mut self, id: ElementId) -> &mut crate::text::Text {
        match &mut self.node_mut(id).data {
            NodeData::String(text) => text,
            _ => unreachable!("kind checked before"),
        }
    }

    fn items_mut(&mut self, id: ElementId) -> &mut Vec<ElementId> {
        match &mut self.node_mut(id).data {
            NodeData::Array(items) => items,
            _ => unreachable!("kind checked before"),
        }
    }

    fn entries_mut(&mut self, id: ElementId) -> &mut BTreeMap<String, ElementId> {
        match &mut self.node_mut(id).data {
            NodeData::Object(entries) => entries,
            _ => unreachable!("kind checked before"),
        }
    }

    fn number_mut(&mut self, id: ElementId) -> &mut f64 {
        match &mut self.node_mut(id).data {
            NodeData::Number(n) => n,
            _ => unreachable!("kind checked before"),
        }
    }

    fn item_at(&mut self, target: ElementId, index: usize) -> Result<ElementId, ApplyError> {
        let items = self.items_mut(target);
        items.get(index).copied().ok_or(ApplyError::IndexOutOfRange {
            target,
            index,
            len: items.len(),
        })
    }

    fn property(&mut self, target: ElementId, key: &str) -> Result<ElementId, ApplyError> {
        self.entries_mut(target)
            .get(key)
            .copied()
            .ok_or_else(|| ApplyError::KeyMissing { target, key: key.to_owned() })
    }
}
