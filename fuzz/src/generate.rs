//! Structure-aware generators: documents and operations built from fuzzer bytes.
//!
//! Random bytes decoded naively would almost never name an element that exists or an index
//! in range, so the fuzzer would only ever test the error paths. These generators look at
//! the document they write operations for: targets are mostly existing elements, operation
//! kinds mostly match the target's kind, indices and keys are mostly near the real ones.
//! A small share of every choice is left wild (any id, any kind, any index, any float) so
//! that the error paths are covered too.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Result, Unstructured};
use concord_ot::{
    DiscreteOperation, Document, ElementId, Kind, Operation, OperationKind, Value, ValueData,
};

/// Counters of ids are drawn from `0..=ID_SPACE` when an id is picked at random, so that
/// random ids hit existing elements and collide with each other.
const ID_SPACE: u64 = 12;

/// The longest string, array or object a generator builds.
const MAX_LEN: usize = 4;

/// How deep nested values go below the root.
const MAX_DEPTH: u32 = 3;

/// Keys are mostly drawn from this small set, so that operations meet existing properties.
const KEYS: [&str; 4] = ["a", "b", "c", ""];

/// Characters of generated text: multi-byte ones make char and byte indices differ.
const CHARS: [char; 6] = ['a', 'b', 'c', ' ', 'é', '😀'];

/// How a generator picks ids and numbers.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// The replica whose ids this generator mints.
    pub replica: u64,
    /// The replicas whose elements operations may target (besides elements they find in
    /// the document); concurrent operations must not know each other's ids.
    pub known_replicas: &'static [u64],
    /// When true, ids are sometimes drawn at random from a small space (duplicates, ids
    /// already in use) instead of always fresh.
    pub reuse_ids: bool,
    /// When true, numbers and deltas are small integers, so that sums are exact and do not
    /// depend on the order of additions. Otherwise they are sometimes any `f64`, NaN and
    /// infinities included.
    pub exact_numbers: bool,
    /// When true, operations sometimes get a kind that does not fit their target, an index
    /// far out of range or an unknown target.
    pub wild: bool,
}

/// Builds values and operations from fuzzer bytes, minting fresh ids for one replica.
pub struct Generator<'u, 'a> {
    u: &'u mut Unstructured<'a>,
    config: Config,
    next_counter: u64,
}

impl<'u, 'a> Generator<'u, 'a> {
    pub fn new(u: &'u mut Unstructured<'a>, config: Config) -> Generator<'u, 'a> {
        Generator { u, config, next_counter: 0 }
    }

    /// A root value: almost always an object, with ids mostly fresh.
    pub fn root(&mut self) -> Result<Value> {
        if self.config.wild && self.u.ratio(1, 32)? {
            return self.value(MAX_DEPTH);
        }
        let id = self.id()?;
        let properties = self.properties(MAX_DEPTH - 1)?;
        Ok(Value::new(id, ValueData::Object(properties)))
    }

    /// A document to apply operations to; `Err` when the generated root is not a valid
    /// document (the caller skips the input).
    pub fn document(&mut self) -> Result<Document> {
        let root = self.root()?;
        Document::new(root).map_err(|_| arbitrary::Error::IncorrectFormat)
    }

    /// An operation made against `doc`: one discrete operation, or a compound whose parts
    /// are each made against the document as the previous parts left it.
    pub fn operation(&mut self, doc: &Document) -> Result<Operation> {
        if self.u.ratio(1, 2)? {
            return Ok(Operation::Discrete(self.discrete(doc)?));
        }
        let len = self.u.int_in_range(0..=MAX_LEN)?;
        let mut scratch = doc.clone();
        let mut ops = Vec::with_capacity(len);
        for _ in 0..len {
            let op = self.discrete(&scratch)?;
            // A part that does not apply leaves the scratch document as it was; the whole
            // compound will then fail, which exercises the roll-back.
            let _ = scratch.apply_discrete(&op);
            ops.push(op);
        }
        Ok(Operation::Compound(ops))
    }

    fn id(&mut self) -> Result<ElementId> {
        if self.config.reuse_ids && self.u.ratio(1, 8)? {
            return self.random_id();
        }
        let id = ElementId::new(self.config.replica, self.next_counter);
        self.next_counter += 1;
        Ok(id)
    }

    /// An id from the small space of ids of the replicas this generator knows.
    fn random_id(&mut self) -> Result<ElementId> {
        let replica = *self.u.choose(self.config.known_replicas)?;
        let counter = self.u.int_in_range(0..=ID_SPACE)?;
        Ok(ElementId::new(replica, counter))
    }

    fn value(&mut self, depth: u32) -> Result<Value> {
        let id = self.id()?;
        let data = match ValueChoice::arbitrary(self.u)? {
            ValueChoice::Object if depth > 0 => ValueData::Object(self.properties(depth - 1)?),
            ValueChoice::Array if depth > 0 => ValueData::Array(self.values(depth - 1)?),
            ValueChoice::Object | ValueChoice::Array | ValueChoice::Null => ValueData::Null,
            ValueChoice::String => ValueData::String(self.text()?),
            ValueChoice::Number => ValueData::Number(self.number()?),
            ValueChoice::Boolean => ValueData::Boolean(self.u.arbitrary()?),
            ValueChoice::Date => ValueData::Date(self.u.arbitrary()?),
        };
        Ok(Value::new(id, data))
    }

    fn values(&mut self, depth: u32) -> Result<Vec<Value>> {
        let len = self.u.int_in_range(0..=MAX_LEN)?;
        (0..len).map(|_| self.value(depth)).collect()
    }

    fn properties(&mut self, depth: u32) -> Result<BTreeMap<String, Value>> {
        let len = self.u.int_in_range(0..=MAX_LEN)?;
        let mut properties = BTreeMap::new();
        for _ in 0..len {
            let key = self.key()?;
            properties.insert(key, self.value(depth)?);
        }
        Ok(properties)
    }

    fn key(&mut self) -> Result<String> {
        if self.u.ratio(1, 8)? {
            return self.u.arbitrary();
        }
        Ok((*self.u.choose(&KEYS)?).to_owned())
    }

    fn text(&mut self) -> Result<String> {
        if self.u.ratio(1, 8)? {
            return self.u.arbitrary();
        }
        let len = self.u.int_in_range(0..=MAX_LEN)?;
        (0..len).map(|_| self.u.choose(&CHARS).copied()).collect()
    }

    fn number(&mut self) -> Result<f64> {
        if !self.config.exact_numbers && self.u.ratio(1, 4)? {
            return Ok(f64::from_bits(self.u.arbitrary()?));
        }
        Ok(f64::from(self.u.arbitrary::<i16>()?))
    }

    /// An index for a sequence of length `len`: mostly in `0..=len + 1`, rarely anything.
    fn index(&mut self, len: usize) -> Result<usize> {
        if self.config.wild && self.u.ratio(1, 32)? {
            return self.u.arbitrary();
        }
        self.u.int_in_range(0..=len + 1)
    }

    /// A key of `entries` most of the time, else any key.
    fn existing_key(&mut self, entries: Option<&BTreeMap<String, ElementId>>) -> Result<String> {
        match entries {
            Some(entries) if !entries.is_empty() && !self.u.ratio(1, 4)? => {
                let keys: Vec<&String> = entries.keys().collect();
                Ok((*self.u.choose(&keys)?).clone())
            }
            _ => self.key(),
        }
    }

    fn target(&mut self, doc: &Document) -> Result<ElementId> {
        if self.config.wild && self.u.ratio(1, 16)? {
            return self.random_id();
        }
        let ids: Vec<ElementId> = doc.ids().collect();
        Ok(*self.u.choose(&ids)?)
    }

    /// One discrete operation against `doc`.
    pub fn discrete(&mut self, doc: &Document) -> Result<DiscreteOperation> {
        let target = self.target(doc)?;
        let kind = match doc.kind(target) {
            Some(kind) if !(self.config.wild && self.u.ratio(1, 16)?) => kind,
            _ => *self.u.choose(&ALL_KINDS)?,
        };
        let kind = match kind {
            Kind::String => self.string_operation(doc.text_len(target).unwrap_or(0))?,
            Kind::Array => self.array_operation(doc.array_len(target).unwrap_or(0))?,
            Kind::Object => self.object_operation(doc.object_entries(target))?,
            Kind::Number => match self.u.int_in_range(0..=1)? {
                0 => OperationKind::NumberDelta { delta: self.number()? },
                _ => OperationKind::NumberSet { value: self.number()? },
            },
            Kind::Boolean => OperationKind::BooleanSet { value: self.u.arbitrary()? },
            Kind::Date => OperationKind::DateSet { value: self.u.arbitrary()? },
            // Nothing applies to null: a number set stands for any mismatched operation.
            Kind::Null => OperationKind::NumberSet { value: self.number()? },
        };
        let op = DiscreteOperation::new(target, kind);
        Ok(if self.u.ratio(1, 16)? { op.into_noop() } else { op })
    }

    fn string_operation(&mut self, len: usize) -> Result<OperationKind> {
        Ok(match self.u.int_in_range(0..=5)? {
            0 => OperationKind::StringSet { value: self.text()? },
            _ => {
                let index = self.index(len)?;
                let delete_count = self.index(len.saturating_sub(index))?;
                OperationKind::StringSplice { index, delete_count, insert: self.text()? }
            }
        })
    }

    fn array_operation(&mut self, len: usize) -> Result<OperationKind> {
        let depth = MAX_DEPTH - 1;
        Ok(match ArrayChoice::arbitrary(self.u)? {
            ArrayChoice::Insert => {
                OperationKind::ArrayInsert { index: self.index(len)?, value: self.value(depth)? }
            }
            ArrayChoice::Remove => {
                OperationKind::ArrayRemove { index: self.index(len.saturating_sub(1))? }
            }
            ArrayChoice::Replace => OperationKind::ArrayReplace {
                index: self.index(len.saturating_sub(1))?,
                value: self.value(depth)?,
            },
            ArrayChoice::Move => OperationKind::ArrayMove {
                from: self.index(len.saturating_sub(1))?,
                to: self.index(len.saturating_sub(1))?,
            },
            ArrayChoice::Set => OperationKind::ArraySet { values: self.values(depth)? },
        })
    }

    fn object_operation(
        &mut self,
        entries: Option<&BTreeMap<String, ElementId>>,
    ) -> Result<OperationKind> {
        let depth = MAX_DEPTH - 1;
        Ok(match ObjectChoice::arbitrary(self.u)? {
            ObjectChoice::Add => {
                OperationKind::ObjectAddProperty { key: self.key()?, value: self.value(depth)? }
            }
            ObjectChoice::SetProperty => OperationKind::ObjectSetProperty {
                key: self.existing_key(entries)?,
                value: self.value(depth)?,
            },
            ObjectChoice::Remove => {
                OperationKind::ObjectRemoveProperty { key: self.existing_key(entries)? }
            }
            ObjectChoice::Set => OperationKind::ObjectSet { values: self.properties(depth)? },
        })
    }
}

const ALL_KINDS: [Kind; 7] =
    [Kind::Object, Kind::Array, Kind::String, Kind::Number, Kind::Boolean, Kind::Null, Kind::Date];

#[derive(Debug, Arbitrary)]
enum ValueChoice {
    Object,
    Array,
    String,
    Number,
    Boolean,
    Null,
    Date,
}

#[derive(Debug, Arbitrary)]
enum ArrayChoice {
    Insert,
    Remove,
    Replace,
    Move,
    Set,
}

#[derive(Debug, Arbitrary)]
enum ObjectChoice {
    Add,
    SetProperty,
    Remove,
    Set,
}
