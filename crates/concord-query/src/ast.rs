//! Concord's own small query AST: what a parsed query means, independent of the SQL parser.

use std::fmt;

use concord_ot::{Value, ValueData};

use crate::like::LikePattern;

/// A parsed query: `SELECT … FROM collection [WHERE …] [ORDER BY …] [LIMIT n] [OFFSET m]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub projection: Projection,
    pub collection: String,
    /// The `WHERE` condition; `None` selects every model of the collection.
    pub filter: Option<Expr>,
    /// `ORDER BY` keys, most significant first. The model id always breaks the remaining ties.
    pub order_by: Vec<OrderKey>,
    pub limit: Option<u64>,
    pub offset: u64,
}

/// What a result row carries of each selected model's data.
#[derive(Debug, Clone, PartialEq)]
pub enum Projection {
    /// `SELECT *`: the whole model.
    All,
    /// `SELECT a, b.c`: the value at each path (absent where the path is missing).
    Paths(Vec<Path>),
}

/// A path into a model: `a.b[0]."key with spaces"`. Never empty; the first step is a key of
/// the model's root object.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Path(pub(crate) Vec<Segment>);

/// One step of a [`Path`].
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Segment {
    /// An object key: `a` or `"a b"`.
    Key(String),
    /// An array position, from 0: `[3]`.
    Index(usize),
}

impl Path {
    /// A path from its segments; `None` when there are none.
    pub fn new(segments: Vec<Segment>) -> Option<Path> {
        (!segments.is_empty()).then_some(Path(segments))
    }

    /// A path of object keys: `Path::keys(["a", "b"])` is `a.b`.
    pub fn keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<Path> {
        Path::new(keys.into_iter().map(|k| Segment::Key(k.to_owned())).collect())
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// The value at this path in `root`, or `None` when the path is missing: a key absent from
    /// an object, a position past an array's end, or a step into a value of the wrong kind.
    pub fn lookup<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        let mut node = root;
        for segment in &self.0 {
            node = match (segment, &node.data) {
                (Segment::Key(key), ValueData::Object(children)) => children.get(key)?,
                (Segment::Index(i), ValueData::Array(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// The data at this path in `root`, or `None` when the path is missing.
    pub fn lookup_data<'v>(&self, root: &'v Value) -> Option<&'v ValueData> {
        self.lookup(root).map(|v| &v.data)
    }
}

/// Writes the path as the query language spells it; keys that are not plain identifiers are
/// double-quoted (a `"` inside doubled), so the text parses back to the same path.
impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    if is_plain_identifier(key) {
                        f.write_str(key)?;
                    } else {
                        write!(f, "\"{}\"", key.replace('"', "\"\""))?;
                    }
                }
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

fn is_plain_identifier(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !crate::parse::is_reserved_word(key)
}

/// One `ORDER BY` key.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderKey {
    pub path: Path,
    pub direction: Direction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Ascending,
    Descending,
}

/// A literal of the query language.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Boolean(bool),
    /// Always finite.
    Number(f64),
    String(String),
}

impl Literal {
    /// The literal as model data (what it is compared with).
    pub fn to_data(&self) -> ValueData {
        match self {
            Literal::Null => ValueData::Null,
            Literal::Boolean(b) => ValueData::Boolean(*b),
            Literal::Number(n) => ValueData::Number(*n),
            Literal::String(s) => ValueData::String(s.clone()),
        }
    }
}

/// A comparison operator. A comparison is always `path op literal` (a literal written on the
/// left is moved to the right and the operator mirrored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CompareOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl CompareOp {
    /// The operator with its operands swapped: `5 < x` is `x > 5`.
    pub fn mirrored(self) -> CompareOp {
        match self {
            CompareOp::Eq => CompareOp::Eq,
            CompareOp::NotEq => CompareOp::NotEq,
            CompareOp::Lt => CompareOp::Gt,
            CompareOp::LtEq => CompareOp::GtEq,
            CompareOp::Gt => CompareOp::Lt,
            CompareOp::GtEq => CompareOp::LtEq,
        }
    }
}

/// A `WHERE` condition. `AND` and `OR` are n-ary (a chain `a AND b AND c` is one node).
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Compare {
        path: Path,
        op: CompareOp,
        value: Literal,
    },
    /// `path [NOT] IN (literal, …)`.
    In {
        path: Path,
        list: Vec<Literal>,
        negated: bool,
    },
    /// `path [NOT] LIKE 'pattern' [ESCAPE 'c']`.
    Like {
        path: Path,
        pattern: LikePattern,
        negated: bool,
    },
    /// `path IS [NOT] NULL`.
    IsNull {
        path: Path,
        negated: bool,
    },
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
}
