//! Composition: one operation that changes a document as two applied in turn do.
//!
//! A client that made many changes offline keeps them composed, so that each remote
//! operation is transformed past a few operations rather than one per keystroke. A compound
//! is already applied in order, so composing always succeeds by concatenation; on top of
//! that, a string splice that touches the text the previous splice of the same string
//! inserted (typing on, backspacing) is folded into it, which is what keeps the composed
//! operation small.

use crate::operation::{DiscreteOperation, Operation, OperationKind};

/// The operation that applies `first`, then `second` (as `second` was made, after `first`).
pub fn compose(first: Operation, second: Operation) -> Operation {
    let mut parts = match first {
        Operation::Discrete(op) => vec![op],
        Operation::Compound(ops) => ops,
    };
    match second {
        Operation::Discrete(op) => push_composed(&mut parts, op),
        Operation::Compound(ops) => {
            for op in ops {
                push_composed(&mut parts, op);
            }
        }
    }
    match <[DiscreteOperation; 1]>::try_from(parts) {
        Ok([one]) => Operation::Discrete(one),
        Err(parts) => Operation::Compound(parts),
    }
}

/// Appends `op` to `parts`, folded into the last part where both are splices of one string
/// whose ranges touch.
fn push_composed(parts: &mut Vec<DiscreteOperation>, op: DiscreteOperation) {
    if let Some(last) = parts.last_mut()
        && !last.noop
        && !op.noop
        && last.target == op.target
        && let (
            OperationKind::StringSplice { index, delete_count, insert },
            OperationKind::StringSplice { index: i2, delete_count: d2, insert: s2 },
        ) = (&mut last.kind, &op.kind)
        && fold_splice(index, delete_count, insert, *i2, *d2, s2)
    {
        return;
    }
    parts.push(op);
}

/// Folds the splice `(i2, d2, s2)`, made after `(index, delete_count, insert)` on the same
/// string, into it, if the range it changes touches the inserted text; false (nothing
/// changed) otherwise. Indices count chars.
fn fold_splice(
    index: &mut usize,
    delete_count: &mut usize,
    insert: &mut String,
    i2: usize,
    d2: usize,
    s2: &str,
) -> bool {
    let (i1, d1) = (*index, *delete_count);
    let ascii = insert.is_ascii();
    let n1 = if ascii { insert.len() } else { insert.chars().count() };
    let e1 = i1 + n1;
    let e2 = i2.saturating_add(d2);
    if i2 > e1 || e2 < i1 {
        return false;
    }
    // In the text after the first splice, the second replaces [i2, e2), which overlaps or
    // touches the inserted [i1, e1). Together they replace [min(i1, i2), max(e1, e2)) of
    // that text; its parts outside the inserted text come from the original one.
    let start = i2.max(i1);
    let end = e2.min(e1);
    let union_end = e1.max(e2);
    *index = i1.min(i2);
    *delete_count = union_end - n1 + d1 - *index;
    let byte = |chars: usize| match ascii {
        true => chars,
        false => insert.char_indices().nth(chars).map_or(insert.len(), |(b, _)| b),
    };
    let (from, to) = (byte(start - i1), byte(end - i1));
    insert.replace_range(from..to, s2);
    true
}
