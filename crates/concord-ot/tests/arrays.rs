//! Properties of concurrent array operations on small arrays of distinct numbers, where
//! every element can be followed by its value: TP1, the null move, and which side comes
//! first when two operations put elements into the same gap.

use std::collections::BTreeMap;

use concord_ot::{
    DiscreteOperation, Document, ElementId, IdGenerator, OperationKind, PathSegment, ReplicaId,
    Value, ValueData, transform_discrete,
};
use proptest::prelude::*;
use serde_json::{Value as Json, json};

/// One array operation, with indices chosen below the array's length by [`resolve`].
#[derive(Debug, Clone)]
enum Pick {
    Insert(usize),
    Remove(usize),
    Replace(usize),
    Move(usize, usize),
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        any::<usize>().prop_map(Pick::Insert),
        any::<usize>().prop_map(Pick::Remove),
        any::<usize>().prop_map(Pick::Replace),
        (any::<usize>(), any::<usize>()).prop_map(|(f, t)| Pick::Move(f, t)),
    ]
}

/// The operation `pick` stands for on an array of `len` elements (one holding at least one
/// element), placing or replacing with `value`.
fn resolve(pick: &Pick, len: usize, value: i64) -> OperationKind {
    let number = Value::from_json(&json!(value), &mut IdGenerator::new(ReplicaId(value as u64), 0))
        .expect("a number is a value");
    match *pick {
        Pick::Insert(i) => OperationKind::ArrayInsert { index: i % (len + 1), value: number },
        Pick::Remove(i) => OperationKind::ArrayRemove { index: i % len },
        Pick::Replace(i) => OperationKind::ArrayReplace { index: i % len, value: number },
        Pick::Move(f, t) => OperationKind::ArrayMove { from: f % len, to: t % len },
    }
}

/// A document `{"t": [0, 1, …, len − 1]}` and the array's id.
fn document(len: usize) -> (Document, ElementId) {
    let mut ids = IdGenerator::new(ReplicaId(0), 0);
    let array = Value::from_json(&json!((0..len as i64).collect::<Vec<_>>()), &mut ids)
        .expect("an array of numbers");
    let root = Value::new(ids.next(), ValueData::Object(BTreeMap::from([("t".into(), array)])));
    let doc = Document::new(root).expect("a valid document");
    let target = doc.element_at(&[PathSegment::Key("t".into())]).expect("the array");
    (doc, target)
}

fn numbers(doc: &Document, target: ElementId) -> Vec<i64> {
    let Some(Json::Array(items)) = doc.value(target).map(|v| v.to_json()) else {
        panic!("the array survives every array operation");
    };
    items.iter().map(|n| n.as_f64().expect("numbers only") as i64).collect()
}

fn applied(doc: &Document, ops: &[&DiscreteOperation]) -> Result<Document, String> {
    let mut doc = doc.clone();
    for op in ops {
        doc.apply_discrete(op).map_err(|e| format!("{e} applying {op:?}"))?;
    }
    Ok(doc)
}

fn op(target: ElementId, kind: OperationKind) -> DiscreteOperation {
    DiscreteOperation { target, noop: false, kind }
}

/// The element an insert or a real move puts somewhere, by value.
fn placed(kind: &OperationKind, before: &[i64]) -> Option<i64> {
    match kind {
        OperationKind::ArrayInsert { value, .. } => value.to_json().as_f64().map(|n| n as i64),
        OperationKind::ArrayMove { from, to } if from != to => Some(before[*from]),
        _ => None,
    }
}

/// The gap `element` sits in within `after`, named by its nearest neighbours on each side
/// that are in `stable`.
fn gap(after: &[i64], element: i64, stable: &[i64]) -> (Option<i64>, Option<i64>) {
    let at = after.iter().position(|&e| e == element).expect("placed element present");
    let left = after[..at].iter().rev().find(|e| stable.contains(e)).copied();
    let right = after[at + 1..].iter().find(|e| stable.contains(e)).copied();
    (left, right)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(20_000), ..ProptestConfig::default() })]

    /// TP1 on arrays, and the gap rule: when both operations put an element (an insert, or
    /// a move of a different element) into the same gap between elements neither touched,
    /// the server's element comes first, in both orders of application.
    #[test]
    fn the_servers_element_comes_first_in_a_shared_gap(
        len in 1usize..7, s in pick(), c in pick(),
    ) {
        let (doc, target) = document(len);
        let before = numbers(&doc, target);
        let server = op(target, resolve(&s, len, 100));
        let client = op(target, resolve(&c, len, 200));
        let (server2, client2) = transform_discrete(server.clone(), client.clone());
        let left = applied(&doc, &[&server, &client2]);
        let right = applied(&doc, &[&client, &server2]);
        prop_assert!(left.is_ok() && right.is_ok(), "{left:?} / {right:?}");
        let (left, right) = (numbers(&left.unwrap(), target), numbers(&right.unwrap(), target));
        prop_assert_eq!(&left, &right, "server'={:?} client'={:?}", server2, client2);

        let (Some(ps), Some(pc)) = (placed(&server.kind, &before), placed(&client.kind, &before))
        else { return Ok(()) };
        if ps == pc {
            return Ok(()); // one element moved twice: the server's destination wins (A-MM-1)
        }
        let stable: Vec<i64> = before.iter().copied().filter(|e| *e != ps && *e != pc).collect();
        let alone = |o: &DiscreteOperation| numbers(&applied(&doc, &[o]).unwrap(), target);
        let gap_s = gap(&alone(&server), ps, &stable);
        let gap_c = gap(&alone(&client), pc, &stable);
        if gap_s == gap_c {
            let at = |e| left.iter().position(|&x| x == e);
            prop_assert!(
                at(ps) < at(pc),
                "server {server:?} and client {client:?} share gap {gap_s:?}, got {left:?}"
            );
        }
    }

    /// A move whose source is its destination changes nothing: not the document, not a
    /// concurrent operation transformed against it (on either side), and it stays a no-op.
    #[test]
    fn a_null_move_is_a_no_op(len in 1usize..7, at in any::<usize>(), other in pick()) {
        let (doc, target) = document(len);
        let at = at % len;
        let null = op(target, OperationKind::ArrayMove { from: at, to: at });
        prop_assert_eq!(numbers(&applied(&doc, &[&null]).unwrap(), target), numbers(&doc, target));
        let other = op(target, resolve(&other, len, 300));
        let (null2, other2) = transform_discrete(null.clone(), other.clone());
        // Another null move may come back flagged as the no-op it is.
        let unchanged = |o: &DiscreteOperation| {
            *o == other || (o.kind == other.kind && is_null_move(&other.kind))
        };
        prop_assert!(unchanged(&other2), "{other:?} became {other2:?}");
        prop_assert!(null2.noop || null2 == null, "{null2:?}");
        let (other3, null3) = transform_discrete(other.clone(), null.clone());
        prop_assert!(unchanged(&other3), "{other:?} became {other3:?}");
        prop_assert!(null3.noop || null3 == null, "{null3:?}");
    }
}

fn is_null_move(kind: &OperationKind) -> bool {
    matches!(kind, OperationKind::ArrayMove { from, to } if from == to)
}

/// `default` cases, or `PROPTEST_CASES` for a longer local run.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}
