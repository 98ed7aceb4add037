//! Generators of documents and *valid* operations, driven by a [`Source`] of choices.
//!
//! Property tests drive them with [`Choices`], a list that proptest generates and shrinks
//! (a shorter or smaller list gives a smaller document and simpler operations, so failures
//! shrink to readable cases); simulations drive them with a seeded [`SimRng`].

use std::collections::BTreeMap;

use crate::rng::SimRng;
use concord_ot::{
    DiscreteOperation, Document, ElementId, IdGenerator, Kind, Operation, OperationKind, ReplicaId,
    Value, ValueData,
};

const KEYS: [&str; 4] = ["a", "b", "c", "d"];
const ALPHABET: [char; 5] = ['x', 'y', 'z', 'é', '🙂'];

/// Where the generators' decisions come from.
pub trait Source {
    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize;

    fn flip(&mut self) -> bool {
        self.below(2) == 1
    }

    fn text(&mut self, max_len: usize) -> String {
        let len = self.below(max_len + 1);
        (0..len).map(|_| ALPHABET[self.below(ALPHABET.len())]).collect()
    }

    /// An integer in -10..=10: sums of these stay exact, so number deltas commute exactly.
    fn small_number(&mut self) -> f64 {
        self.below(21) as f64 - 10.0
    }
}

/// A list of choices; reads past the end give 0, the "simplest" answer.
#[derive(Debug)]
pub struct Choices<'a> {
    values: &'a [u16],
    at: usize,
}

impl<'a> Choices<'a> {
    pub fn new(values: &'a [u16]) -> Choices<'a> {
        Choices { values, at: 0 }
    }
}

impl Source for Choices<'_> {
    fn below(&mut self, n: usize) -> usize {
        let v = self.values.get(self.at).copied().unwrap_or(0) as usize;
        self.at += 1;
        v % n
    }
}

impl Source for SimRng {
    fn below(&mut self, n: usize) -> usize {
        SimRng::below(self, n)
    }
}

/// A random value of any kind, nested at most `depth` levels.
pub fn gen_value(c: &mut impl Source, ids: &mut IdGenerator, depth: usize) -> Value {
    let id = ids.next();
    let kinds = if depth == 0 { 5 } else { 7 };
    let data = match c.below(kinds) {
        0 => ValueData::String(c.text(4)),
        1 => ValueData::Number(c.small_number()),
        2 => ValueData::Boolean(c.flip()),
        3 => ValueData::Null,
        4 => ValueData::Date(c.below(1000) as i64),
        5 => ValueData::Array((0..c.below(4)).map(|_| gen_value(c, ids, depth - 1)).collect()),
        _ => ValueData::Object(gen_entries(c, ids, depth - 1)),
    };
    Value::new(id, data)
}

fn gen_entries(
    c: &mut impl Source,
    ids: &mut IdGenerator,
    depth: usize,
) -> BTreeMap<String, Value> {
    let mut entries = BTreeMap::new();
    for _ in 0..c.below(4) {
        let key = KEYS[c.below(KEYS.len())].to_owned();
        entries.insert(key, gen_value(c, ids, depth));
    }
    entries
}

/// A document with nested objects, arrays and every scalar kind. Its ids come from
/// replica 0; operations use other replicas.
pub fn gen_document(c: &mut impl Source) -> Document {
    let mut ids = IdGenerator::new(ReplicaId(0), 0);
    let root = ids.next();
    let mut entries = gen_entries(c, &mut ids, 2);
    // Always offer a string, an array and a number to edit.
    entries
        .entry("s".into())
        .or_insert_with(|| Value::new(ids.next(), ValueData::String("hello wörld".into())));
    entries.entry("l".into()).or_insert_with(|| {
        let items = (0..3).map(|i| Value::new(ids.next(), ValueData::Number(i as f64))).collect();
        Value::new(ids.next(), ValueData::Array(items))
    });
    entries.entry("n".into()).or_insert_with(|| Value::new(ids.next(), ValueData::Number(1.0)));
    Document::new(Value::new(root, ValueData::Object(entries))).expect("generated ids are unique")
}

/// One valid discrete operation on `doc`, minting new ids from `ids`. Three times in four it
/// targets `focus` (when still in the document), so that concurrent operations often meet
/// on one element.
pub fn gen_discrete(
    c: &mut impl Source,
    doc: &Document,
    ids: &mut IdGenerator,
    focus: Option<ElementId>,
) -> DiscreteOperation {
    let target = match focus {
        Some(focus) if doc.contains(focus) && c.below(4) != 0 => focus,
        _ => {
            let all: Vec<ElementId> = doc.ids().collect();
            all[c.below(all.len())]
        }
    };
    let kind = match doc.kind(target).expect("target from the document") {
        Kind::String => {
            let len = doc.text_len(target).unwrap();
            if c.below(8) == 0 {
                OperationKind::StringSet { value: c.text(4) }
            } else {
                let index = c.below(len + 1);
                let delete_count = c.below(len - index + 1).min(c.below(5));
                OperationKind::StringSplice { index, delete_count, insert: c.text(3) }
            }
        }
        Kind::Array => {
            let len = doc.array_len(target).unwrap();
            match (c.below(if len == 0 { 2 } else { 9 }), len) {
                (0, _) => OperationKind::ArrayInsert {
                    index: c.below(len + 1),
                    value: gen_value(c, ids, 1),
                },
                (1, _) => OperationKind::ArraySet {
                    values: (0..c.below(3)).map(|_| gen_value(c, ids, 1)).collect(),
                },
                (2 | 3, _) => OperationKind::ArrayRemove { index: c.below(len) },
                (4 | 5, _) => {
                    OperationKind::ArrayReplace { index: c.below(len), value: gen_value(c, ids, 1) }
                }
                _ => OperationKind::ArrayMove { from: c.below(len), to: c.below(len) },
            }
        }
        Kind::Object => {
            let entries = doc.object_entries(target).unwrap();
            let key = KEYS[c.below(KEYS.len())].to_owned();
            match c.below(7) {
                0 => OperationKind::ObjectSet { values: gen_entries(c, ids, 1) },
                _ if !entries.contains_key(&key) => {
                    OperationKind::ObjectAddProperty { key, value: gen_value(c, ids, 1) }
                }
                1..=3 => OperationKind::ObjectSetProperty { key, value: gen_value(c, ids, 1) },
                _ => OperationKind::ObjectRemoveProperty { key },
            }
        }
        Kind::Number => {
            if c.flip() {
                OperationKind::NumberDelta { delta: c.small_number() }
            } else {
                OperationKind::NumberSet { value: c.small_number() }
            }
        }
        Kind::Boolean => OperationKind::BooleanSet { value: c.flip() },
        Kind::Date => OperationKind::DateSet { value: c.below(1000) as i64 },
        Kind::Null => {
            // Nothing edits a null; edit its parent instead by replacing the whole root key.
            return DiscreteOperation::new(target, OperationKind::BooleanSet { value: true })
                .into_noop();
        }
    };
    DiscreteOperation::new(target, kind)
}

/// A valid operation on `doc`: discrete, or a compound whose parts are each valid on the
/// document as the earlier parts left it. Parts favour `focus`, then each other's targets.
pub fn gen_operation(
    c: &mut impl Source,
    doc: &Document,
    replica: u64,
    focus: Option<ElementId>,
) -> Operation {
    gen_operation_with(c, doc, &mut IdGenerator::new(ReplicaId(replica), 0), focus)
}

/// [`gen_operation`] minting ids from `ids`, for a replica that edits many times.
pub fn gen_operation_with(
    c: &mut impl Source,
    doc: &Document,
    ids: &mut IdGenerator,
    focus: Option<ElementId>,
) -> Operation {
    if c.below(3) != 0 {
        return Operation::Discrete(gen_discrete(c, doc, ids, focus));
    }
    let mut scratch = doc.clone();
    let mut focus = focus;
    let ops = (0..1 + c.below(4))
        .map(|_| {
            let op = gen_discrete(c, &scratch, ids, focus);
            scratch.apply_discrete(&op).expect("generated operations are valid");
            focus = focus.or(Some(op.target));
            op
        })
        .collect();
    Operation::Compound(ops)
}

/// An element for concurrent operations to meet on: first a kind, uniformly among the
/// kinds present, then an element of that kind, so arrays and strings meet as often as the
/// more numerous scalars.
pub fn pick_focus(c: &mut impl Source, doc: &Document) -> ElementId {
    let mut by_kind: BTreeMap<String, Vec<ElementId>> = BTreeMap::new();
    for id in doc.ids() {
        let kind = doc.kind(id).unwrap();
        if kind != Kind::Null {
            by_kind.entry(kind.to_string()).or_default().push(id);
        }
    }
    let kinds: Vec<&Vec<ElementId>> = by_kind.values().collect();
    let ids = kinds[c.below(kinds.len())];
    ids[c.below(ids.len())]
}

/// The first element `op` targets.
pub fn first_target(op: &Operation) -> Option<ElementId> {
    op.discrete().first().map(|op| op.target)
}
