//! Operations: the 15 discrete changes and the flat compound that batches them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::id::ElementId;
use crate::value::{Kind, Value};

/// A change to a model: one discrete operation, or a flat batch applied in order, all or
/// nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Operation {
    Discrete(DiscreteOperation),
    Compound(Vec<DiscreteOperation>),
}

/// One change to one element, addressed by id.
///
/// `noop` marks an operation that transformation has neutralised: it is still ordered and
/// versioned, but applying it changes nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscreteOperation {
    pub target: ElementId,
    pub noop: bool,
    pub kind: OperationKind,
}

/// What a discrete operation does to its target. String indices count `char`s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OperationKind {
    /// Removes `delete_count` chars at `index`, then inserts `insert` there.
    StringSplice {
        index: usize,
        delete_count: usize,
        insert: String,
    },
    StringSet {
        value: String,
    },
    ArrayInsert {
        index: usize,
        value: Value,
    },
    ArrayRemove {
        index: usize,
    },
    ArrayReplace {
        index: usize,
        value: Value,
    },
    /// Takes the element at `from` out, then puts it back so that it sits at `to`.
    ArrayMove {
        from: usize,
        to: usize,
    },
    ArraySet {
        values: Vec<Value>,
    },
    ObjectAddProperty {
        key: String,
        value: Value,
    },
    ObjectSetProperty {
        key: String,
        value: Value,
    },
    ObjectRemoveProperty {
        key: String,
    },
    ObjectSet {
        values: BTreeMap<String, Value>,
    },
    NumberDelta {
        delta: f64,
    },
    NumberSet {
        value: f64,
    },
    BooleanSet {
        value: bool,
    },
    /// Milliseconds since the Unix epoch, UTC.
    DateSet {
        value: i64,
    },
}

impl OperationKind {
    /// The kind of element this operation applies to.
    pub fn target_kind(&self) -> Kind {
        use OperationKind::*;
        match self {
            StringSplice { .. } | StringSet { .. } => Kind::String,
            ArrayInsert { .. }
            | ArrayRemove { .. }
            | ArrayReplace { .. }
            | ArrayMove { .. }
            | ArraySet { .. } => Kind::Array,
            ObjectAddProperty { .. }
            | ObjectSetProperty { .. }
            | ObjectRemoveProperty { .. }
            | ObjectSet { .. } => Kind::Object,
            NumberDelta { .. } | NumberSet { .. } => Kind::Number,
            BooleanSet { .. } => Kind::Boolean,
            DateSet { .. } => Kind::Date,
        }
    }

    /// Whether this operation brings values (new elements) into the document.
    pub fn inserts_values(&self) -> bool {
        use OperationKind::*;
        matches!(
            self,
            ArrayInsert { .. }
                | ArrayReplace { .. }
                | ArraySet { .. }
                | ObjectAddProperty { .. }
                | ObjectSetProperty { .. }
                | ObjectSet { .. }
        )
    }

    /// The values this operation brings into the document.
    pub fn inserted_values(&self) -> Vec<&Value> {
        use OperationKind::*;
        match self {
            ArrayInsert { value, .. }
            | ArrayReplace { value, .. }
            | ObjectAddProperty { value, .. }
            | ObjectSetProperty { value, .. } => vec![value],
            ArraySet { values } => values.iter().collect(),
            ObjectSet { values } => values.values().collect(),
            _ => Vec::new(),
        }
    }
}

impl DiscreteOperation {
    pub fn new(target: ElementId, kind: OperationKind) -> DiscreteOperation {
        DiscreteOperation { target, noop: false, kind }
    }

    /// The same operation, neutralised.
    pub fn into_noop(mut self) -> DiscreteOperation {
        self.noop = true;
        self
    }
}

impl Operation {
    /// The discrete operations in application order.
    pub fn discrete(&self) -> &[DiscreteOperation] {
        match self {
            Operation::Discrete(op) => std::slice::from_ref(op),
            Operation::Compound(ops) => ops,
        }
    }

    /// True when applying this operation changes nothing (every part is flagged no-op).
    pub fn is_noop(&self) -> bool {
        self.discrete().iter().all(|op| op.noop)
    }
}

impl From<DiscreteOperation> for Operation {
    fn from(op: DiscreteOperation) -> Operation {
        Operation::Discrete(op)
    }
}
