//! Operational transformation: `transform(server, client) -> (server', client')` such that
//! applying `server` then `client'` gives the same document as `client` then `server'` (TP1).
//!
//! The rules are tabled, with an example per subtle case, in `docs/ot.md`. In short: the
//! server's operation wins ties; a whole-value set beats every fine-grained change; set beats
//! delta; set-property and replace beat a concurrent remove; a string removal swallows text
//! inserted inside its range; identical concurrent changes both become no-ops. Operations on
//! different elements never interact here — one whose target a concurrent change removed
//! becomes a no-op when applied.
//!
//! `transform` is total: a pair that cannot arise from two valid operations on one state
//! (say, an add-property and a set-property of the same key) resolves deterministically
//! rather than failing, and applying the result then reports the invalid operation.

use crate::operation::{DiscreteOperation, Operation, OperationKind};

/// Transforms two concurrent operations made against the same document state. `server` is
/// the one ordered first.
pub fn transform(server: Operation, client: Operation) -> (Operation, Operation) {
    match (server, client) {
        (Operation::Discrete(s), Operation::Discrete(c)) => {
            let (s, c) = transform_discrete(s, c);
            (Operation::Discrete(s), Operation::Discrete(c))
        }
        (Operation::Discrete(s), Operation::Compound(mut cs)) => {
            let s = transform_against_all(s, &mut cs);
            (Operation::Discrete(s), Operation::Compound(cs))
        }
        (Operation::Compound(ss), Operation::Discrete(c)) => {
            let mut cs = vec![c];
            let ss = ss.into_iter().map(|s| transform_against_all(s, &mut cs)).collect();
            let c = cs.pop().expect("one client operation in, one out");
            (Operation::Compound(ss), Operation::Discrete(c))
        }
        (Operation::Compound(ss), Operation::Compound(mut cs)) => {
            let ss = ss.into_iter().map(|s| transform_against_all(s, &mut cs)).collect();
            (Operation::Compound(ss), Operation::Compound(cs))
        }
    }
}

/// Transforms `s` against each of `cs` in order, transforming `cs` in place against `s`.
fn transform_against_all(
    mut s: DiscreteOperation,
    cs: &mut [DiscreteOperation],
) -> DiscreteOperation {
    for c in cs.iter_mut() {
        let (s2, c2) = transform_discrete(s, std::mem::replace(c, placeholder()));
        s = s2;
        *c = c2;
    }
    s
}

fn placeholder() -> DiscreteOperation {
    DiscreteOperation::new(crate::ElementId::new(0, 0), OperationKind::BooleanSet { value: false })
        .into_noop()
}

/// Transforms two discrete operations. Only operations on the same element interact.
pub fn transform_discrete(
    s: DiscreteOperation,
    c: DiscreteOperation,
) -> (DiscreteOperation, DiscreteOperation) {
    if s.noop || c.noop || s.target != c.target {
        return (s, c);
    }
    let target = s.target;
    let (sk, ck) = match (s.kind, c.kind) {
        (
            s @ (StringSplice { .. } | StringSet { .. }),
            c @ (StringSplice { .. } | StringSet { .. }),
        ) => string::transform(s, c),
        (s, c) if is_array(&s) && is_array(&c) => array::transform(s, c),
        (s, c) if is_object(&s) && is_object(&c) => object::transform(s, c),
        (s, c) => scalar::transform(s, c),
    };
    (
        DiscreteOperation { target, noop: sk.noop, kind: sk.kind },
        DiscreteOperation { target, noop: ck.noop, kind: ck.kind },
    )
}

use OperationKind::*;

/// An operation kind with its no-op flag, as the per-type rules produce them.
#[derive(Debug)]
struct Kinded {
    kind: OperationKind,
    noop: bool,
}

fn keep(kind: OperationKind) -> Kinded {
    Kinded { kind, noop: false }
}

fn noop(kind: OperationKind) -> Kinded {
    Kinded { kind, noop: true }
}

fn is_array(kind: &OperationKind) -> bool {
    matches!(
        kind,
        ArrayInsert { .. }
            | ArrayRemove { .. }
            | ArrayReplace { .. }
            | ArrayMove { .. }
            | ArraySet { .. }
    )
}

fn is_object(kind: &OperationKind) -> bool {
    matches!(
        kind,
        ObjectAddProperty { .. }
            | ObjectSetProperty { .. }
            | ObjectRemoveProperty { .. }
            | ObjectSet { .. }
    )
}

/// The whole-value-set rule shared by every kind: set beats everything; equal sets cancel.
fn set_rule(
    s: OperationKind,
    c: OperationKind,
    s_is_set: bool,
    c_is_set: bool,
) -> (Kinded, Kinded) {
    match (s_is_set, c_is_set) {
        (true, true) if s == c => (noop(s), noop(c)),
        (true, _) => (keep(s), noop(c)),
        (false, true) => (noop(s), keep(c)),
        (false, false) => unreachable!("only called when one side is a set"),
    }
}

mod scalar {
    use super::*;

    /// Number, boolean and date: deltas commute, a set beats a delta, server wins between
    /// sets, equal sets cancel. Mismatched kinds (never both valid) pass through.
    pub(super) fn transform(s: OperationKind, c: OperationKind) -> (Kinded, Kinded) {
        match (&s, &c) {
            (NumberDelta { .. }, NumberDelta { .. }) => (keep(s), keep(c)),
            (NumberDelta { .. }, NumberSet { .. }) => (noop(s), keep(c)),
            (NumberSet { .. }, NumberDelta { .. }) => (keep(s), noop(c)),
            (NumberSet { .. }, NumberSet { .. })
            | (BooleanSet { .. }, BooleanSet { .. })
            | (DateSet { .. }, DateSet { .. }) => set_rule(s, c, true, true),
            _ => (keep(s), keep(c)),
        }
    }
}

mod string {
    use super::*;

    pub(super) fn transform(s: OperationKind, c: OperationKind) -> (Kinded, Kinded) {
        match (s, c) {
            (
                StringSplice { index: i1, delete_count: d1, insert: x1 },
                StringSplice { index: i2, delete_count: d2, insert: x2 },
            ) => {
                let a = Splice::new(i1, d1, x1);
                let b = Splice::new(i2, d2, x2);
                if a.index == b.index && a.delete == b.delete && a.delete > 0 {
                    // The same range replaced twice: equal text cancels, else the server wins
                    // and also replaces the client's text.
                    if a.insert == b.insert {
                        return (noop(a.into_kind()), noop(b.into_kind()));
                    }
                    let s = Splice { delete: b.insert_len, ..a };
                    return (keep(s.into_kind()), noop(b.into_kind()));
                }
                let s2 = a.after(&b, true);
                let c2 = b.after(&a, false);
                (s2.into_kinded(), c2.into_kinded())
            }
            (s @ StringSet { .. }, c @ StringSet { .. }) => set_rule(s, c, true, true),
            (s @ StringSet { .. }, c) => set_rule(s, c, true, false),
            (s, c) => set_rule(s, c, false, true),
        }
    }

    /// A splice with its insert length in chars.
    #[derive(Debug, Clone)]
    struct Splice {
        index: usize,
        delete: usize,
        insert: String,
        insert_len: usize,
    }

    impl Splice {
        fn new(index: usize, delete: usize, insert: String) -> Splice {
            let insert_len = insert.chars().count();
            Splice { index, delete, insert, insert_len }
        }

        fn end(&self) -> usize {
            self.index.saturating_add(self.delete)
        }

        /// Whether `other`'s removal swallows this splice's inserted text: its insertion
        /// point lies strictly inside `other`'s range, or both start together and `other`
        /// removes strictly more.
        fn swallowed_by(&self, other: &Splice) -> bool {
            other.delete > 0
                && ((other.index < self.index && self.index < other.end())
                    || (self.delete > 0 && self.index == other.index && self.end() < other.end()))
        }

        /// This splice rewritten to apply after `other` (concurrent with it) has applied.
        /// `wins_tie` orders two inserts at one position: the winner's text comes first.
        fn after(&self, other: &Splice, wins_tie: bool) -> Splice {
            let (i1, e1) = (self.index, self.end());
            let (i2, e2, n2) = (other.index, other.end(), other.insert_len);
            // Maps a position at or after `other`'s range end.
            let shifted = |p: usize| p.saturating_sub(other.delete).saturating_add(n2);
            let start = if i1 < i2 {
                i1
            } else if i1 == i2 {
                let pure_insert_here = self.delete == 0 && other.delete == 0;
                if (self.delete > 0 && other.delete == 0) || (pure_insert_here && !wins_tie) {
                    i1.saturating_add(n2)
                } else {
                    i1
                }
            } else if i1 < e2 {
                i2.saturating_add(n2)
            } else {
                shifted(i1)
            };
            let end = if self.delete == 0 {
                start
            } else if e1 <= i2 {
                e1
            } else if e1 >= e2 {
                shifted(e1)
            } else if i1 == i2 {
                i2
            } else {
                i2.saturating_add(n2)
            };
            let (insert, insert_len) = if self.swallowed_by(other) {
                (String::new(), 0)
            } else {
                (self.insert.clone(), self.insert_len)
            };
            Splice { index: start, delete: end.saturating_sub(start), insert, insert_len }
        }

        fn into_kind(self) -> OperationKind {
            StringSplice { index: self.index, delete_count: self.delete, insert: self.insert }
        }

        fn into_kinded(self) -> Kinded {
            let empty = self.delete == 0 && self.insert_len == 0;
            Kinded { kind: self.into_kind(), noop: empty }
        }
    }
}

mod object {
    use super::*;

    pub(super) fn transform(s: OperationKind, c: OperationKind) -> (Kinded, Kinded) {
        match (s, c) {
            (s @ ObjectSet { .. }, c @ ObjectSet { .. }) => set_rule(s, c, true, true),
            (s @ ObjectSet { .. }, c) => set_rule(s, c, true, false),
            (s, c @ ObjectSet { .. }) => set_rule(s, c, false, true),
            (s, c) if key(&s) != key(&c) => (keep(s), keep(c)),
            (ObjectAddProperty { key, value: vs }, ObjectAddProperty { value: vc, .. }) => {
                if vs == vc {
                    let add = ObjectAddProperty { key, value: vs };
                    (noop(add.clone()), noop(add))
                } else {
                    // Server wins: after the client's add, the server's becomes a set.
                    let c = ObjectAddProperty { key: key.clone(), value: vc };
                    (keep(ObjectSetProperty { key, value: vs }), noop(c))
                }
            }
            (ObjectSetProperty { key, value: vs }, ObjectSetProperty { value: vc, .. }) => {
                let equal = vs == vc;
                let c = ObjectSetProperty { key: key.clone(), value: vc };
                let s = ObjectSetProperty { key, value: vs };
                if equal { (noop(s), noop(c)) } else { (keep(s), noop(c)) }
            }
            // Set beats remove: the set re-adds the property the remove took away.
            (ObjectSetProperty { key, value }, c @ ObjectRemoveProperty { .. }) => {
                (keep(ObjectAddProperty { key, value }), noop(c))
            }
            (s @ ObjectRemoveProperty { .. }, ObjectSetProperty { key, value }) => {
                (noop(s), keep(ObjectAddProperty { key, value }))
            }
            (s @ ObjectRemoveProperty { .. }, c @ ObjectRemoveProperty { .. }) => {
                (noop(s), noop(c))
            }
            // Add against set or remove of one key cannot both be valid on one state; the
            // server's operation stands.
            (s, c) => (keep(s), noop(c)),
        }
    }

    fn key(kind: &OperationKind) -> Option<&str> {
        match kind {
            ObjectAddProperty { key, .. }
            | ObjectSetProperty { key, .. }
            | ObjectRemoveProperty { key } => Some(key),
            _ => None,
        }
    }
}

mod array {
    use super::*;

    pub(super) fn transform(s: OperationKind, c: OperationKind) -> (Kinded, Kinded) {
        match (s, c) {
            (s @ ArraySet { .. }, c @ ArraySet { .. }) => set_rule(s, c, true, true),
            (s @ ArraySet { .. }, c) => set_rule(s, c, true, false),
            (s, c @ ArraySet { .. }) => set_rule(s, c, false, true),
            (s, c) => indexed(s, c),
        }
    }

    /// Insert, remove, replace and move. A move `(from, to)` behaves as a remove at `from`
    /// followed by an insert at `to` of the same element, so most move rules follow from
    /// the insert/remove ones; only two operations on the moved element itself need rules
    /// of their own.
    fn indexed(s: OperationKind, c: OperationKind) -> (Kinded, Kinded) {
        match (s, c) {
            (ArrayInsert { index: mut a, value: va }, ArrayInsert { index: mut b, value: vb }) => {
                insert_insert(&mut a, &mut b);
                (
                    keep(ArrayInsert { index: a, value: va }),
                    keep(ArrayInsert { index: b, value: vb }),
                )
            }
            (ArrayInsert { index: mut a, value }, ArrayRemove { index: mut b }) => {
                insert_remove(&mut a, &mut b);
                (keep(ArrayInsert { index: a, value }), keep(ArrayRemove { index: b }))
            }
            (ArrayRemove { index: mut a }, ArrayInsert { index: mut b, value }) => {
                insert_remove(&mut b, &mut a);
                (keep(ArrayRemove { index: a }), keep(ArrayInsert { index: b, value }))
            }
            (ArrayRemove { index: a }, ArrayRemove { index: b }) if a == b => {
                (noop(ArrayRemove { index: a }), noop(ArrayRemove { index: b }))
            }
            (ArrayRemove { index: mut a }, ArrayRemove { index: mut b }) => {
                remove_remove(&mut a, &mut b);
                (keep(ArrayRemove { index: a }), keep(ArrayRemove { index: b }))
            }
            (ArrayInsert { index: a, value }, ArrayReplace { index: mut b, value: vb }) => {
                insert_shifts(a, &mut b);
                (keep(ArrayInsert { index: a, value }), keep(ArrayReplace { index: b, value: vb }))
            }
            (ArrayReplace { index: mut a, value: va }, ArrayInsert { index: b, value }) => {
                insert_shifts(b, &mut a);
                (keep(ArrayReplace { index: a, value: va }), keep(ArrayInsert { index: b, value }))
            }
            // Replace beats remove: the replacement comes back as an insert.
            (ArrayRemove { index: a }, ArrayReplace { index: b, value }) if a == b => {
                (noop(ArrayRemove { index: a }), keep(ArrayInsert { index: b, value }))
            }
            (ArrayReplace { index: a, value }, ArrayRemove { index: b }) if a == b => {
                (keep(ArrayInsert { index: a, value }), noop(ArrayRemove { index: b }))
            }
            (ArrayRemove { index: a }, ArrayReplace { index: mut b, value }) => {
                remove_shifts(a, &mut b);
                (keep(ArrayRemove { index: a }), keep(ArrayReplace { index: b, value }))
            }
            (ArrayReplace { index: mut a, value }, ArrayRemove { index: b }) => {
                remove_shifts(b, &mut a);
                (keep(ArrayReplace { index: a, value }), keep(ArrayRemove { index: b }))
            }
            (ArrayReplace { index: a, value: va }, ArrayReplace { index: b, value: vb }) => {
                let s = ArrayReplace { index: a, value: va };
                let c = ArrayReplace { index: b, value: vb };
                if a != b {
                    (keep(s), keep(c))
                } else if s == c {
                    (noop(s), noop(c))
                } else {
                    (keep(s), noop(c))
                }
            }
            // A move onto its own index does nothing, so it shifts nothing either (as a
            // remove-then-insert it would push a concurrent insert at that index aside).
            (s @ ArrayMove { from, to }, c) if from == to => (noop(s), keep(c)),
            (s, c @ ArrayMove { from, to }) if from == to => (keep(s), noop(c)),
            (ArrayMove { from, to }, c) => {
                let (m, c) = move_other(Move { from, to }, c, true);
                (m, c)
            }
            (s, ArrayMove { from, to }) => {
                let (m, s) = move_other(Move { from, to }, s, false);
                (s, m)
            }
            (s, c) => unreachable!("array pairs are exhaustive: {s:?} / {c:?}"),
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq)]
    struct Move {
        from: usize,
        to: usize,
    }

    /// Transforms a move against another indexed operation `o`; `move_is_server` says which
    /// side the move is on (it decides ties). Returns `(move', o')`.
    fn move_other(m: Move, o: OperationKind, move_is_server: bool) -> (Kinded, Kinded) {
        let Move { mut from, mut to } = m;
        let moved = |from, to| keep(ArrayMove { from, to });
        match o {
            ArrayInsert { index: mut p, value } => {
                if move_is_server {
                    remove_insert_server_first(&mut from, &mut p);
                    insert_insert(&mut to, &mut p);
                } else {
                    insert_remove(&mut p, &mut from);
                    insert_insert(&mut p, &mut to);
                }
                (moved(from, to), keep(ArrayInsert { index: p, value }))
            }
            // Removing the moved element wins: the remove follows it to its destination.
            ArrayRemove { index } if index == from => {
                (noop(ArrayMove { from, to }), keep(ArrayRemove { index: to }))
            }
            ArrayRemove { index: mut r } => {
                remove_remove(&mut from, &mut r);
                if move_is_server {
                    insert_remove(&mut to, &mut r);
                } else {
                    remove_insert_server_first(&mut r, &mut to);
                }
                (moved(from, to), keep(ArrayRemove { index: r }))
            }
            // Replacing the moved element follows it; the move stands.
            ArrayReplace { index, value } if index == from => {
                (moved(from, to), keep(ArrayReplace { index: to, value }))
            }
            ArrayReplace { index: mut p, value } => {
                remove_shifts(from, &mut p);
                insert_shifts(to, &mut p);
                (moved(from, to), keep(ArrayReplace { index: p, value }))
            }
            ArrayMove { from: f2, to: t2 } if f2 == from => {
                // Both moved the same element: the server's destination wins.
                let other = ArrayMove { from: f2, to: t2 };
                if t2 == to {
                    (noop(ArrayMove { from, to }), noop(other))
                } else if move_is_server {
                    (moved(t2, to), noop(other))
                } else {
                    (noop(ArrayMove { from, to }), moved(to, t2))
                }
            }
            ArrayMove { from: mut f2, to: mut t2 } => {
                // Two moves of different elements: each is remove-then-insert.
                let (sf, st, cf, ct) = if move_is_server {
                    (&mut from, &mut to, &mut f2, &mut t2)
                } else {
                    (&mut f2, &mut t2, &mut from, &mut to)
                };
                remove_remove(sf, cf);
                remove_insert_server_first(sf, ct);
                insert_remove(st, cf);
                insert_insert(st, ct);
                (moved(from, to), moved(f2, t2))
            }
            other => unreachable!("not an indexed array operation: {other:?}"),
        }
    }

    /// Server insert at `a`, client insert at `b`: on a tie the server's comes first.
    fn insert_insert(a: &mut usize, b: &mut usize) {
        if *a <= *b { *b = b.saturating_add(1) } else { *a = a.saturating_add(1) }
    }

    /// Concurrent insert at `i` and remove at `r` (either side): an insert at the removed
    /// index goes before the removed element.
    fn insert_remove(i: &mut usize, r: &mut usize) {
        if *i <= *r { *r = r.saturating_add(1) } else { *i = i.saturating_sub(1) }
    }

    /// Server remove at `r`, client insert at `i`: same rule as [`insert_remove`].
    fn remove_insert_server_first(r: &mut usize, i: &mut usize) {
        insert_remove(i, r)
    }

    /// Two removes of different indices.
    fn remove_remove(a: &mut usize, b: &mut usize) {
        if *a < *b { *b = b.saturating_sub(1) } else { *a = a.saturating_sub(1) }
    }

    /// An element index `p` after an insert at `i`.
    fn insert_shifts(i: usize, p: &mut usize) {
        if i <= *p {
            *p = p.saturating_add(1)
        }
    }

    /// An element index `p` (not the removed one) after a remove at `r`.
    fn remove_shifts(r: usize, p: &mut usize) {
        if r < *p {
            *p = p.saturating_sub(1)
        }
    }
}
