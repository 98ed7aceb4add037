//! Index planning: which declared index (if any) serves a query, over which key range, and
//! what is left to check on the models it yields.
//!
//! An index on a path holds one entry per model of the collection, keyed by
//! [`IndexKey::encode`] of the value at that path (a missing path has a key too) followed by
//! the model id, so entries sort by value and then by id.

use std::cmp::Ordering;
use std::ops::{Bound, RangeBounds};

use crate::ast::{CompareOp, Direction, Expr, Literal, Path, Query};
use crate::key::{IndexKey, TAG_BOOLEAN, TAG_NUMBER, TAG_STRING};

/// How to run a query: through one index or over the whole collection.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The index to read, or `None`: scan every model of the collection.
    pub index: Option<IndexScan>,
    /// What a model from the scan must still satisfy (`None`: nothing more). The conditions the
    /// index bounds capture exactly are left out of it.
    pub residual: Option<Expr>,
}

/// A read of one index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexScan {
    /// The indexed path.
    pub path: Path,
    /// The keys to read.
    pub bounds: KeyBounds,
    /// Which way to read the index.
    pub direction: Direction,
    /// Whether entries read in `direction` (by key, then model id) already come in the query's
    /// result order, so that LIMIT can stop the scan early. When false, the models found must be
    /// sorted.
    pub order_satisfied: bool,
}

/// A set of index keys: one key, or a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyBounds {
    Equal(Vec<u8>),
    Range { lower: Bound<Vec<u8>>, upper: Bound<Vec<u8>> },
}

impl KeyBounds {
    /// Every key.
    pub fn all() -> KeyBounds {
        KeyBounds::Range { lower: Bound::Unbounded, upper: Bound::Unbounded }
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        self.as_range().contains(key)
    }

    fn as_range(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        match self {
            KeyBounds::Equal(k) => (Bound::Included(k), Bound::Included(k)),
            KeyBounds::Range { lower, upper } => (as_ref(lower), as_ref(upper)),
        }
    }

    /// The keys in both.
    fn intersect(&self, other: &KeyBounds) -> KeyBounds {
        let (l1, u1) = self.as_range();
        let (l2, u2) = other.as_range();
        let lower = if cmp_lower(l1, l2) == Ordering::Less { l2 } else { l1 };
        let upper = if cmp_upper(u1, u2) == Ordering::Greater { u2 } else { u1 };
        match (lower, upper) {
            (Bound::Included(l), Bound::Included(u)) if l == u => KeyBounds::Equal(l.to_vec()),
            _ => KeyBounds::Range { lower: owned(lower), upper: owned(upper) },
        }
    }
}

fn as_ref(bound: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match bound {
        Bound::Included(k) => Bound::Included(k),
        Bound::Excluded(k) => Bound::Excluded(k),
        Bound::Unbounded => Bound::Unbounded,
    }
}

fn owned(bound: Bound<&[u8]>) -> Bound<Vec<u8>> {
    bound.map(<[u8]>::to_vec)
}

/// Orders lower bounds by how much they exclude: unbounded < included k < excluded k.
fn cmp_lower(a: Bound<&[u8]>, b: Bound<&[u8]>) -> Ordering {
    cmp_bounds(a, b, Ordering::Less)
}

/// Orders upper bounds by how much they admit: excluded k < included k < unbounded.
fn cmp_upper(a: Bound<&[u8]>, b: Bound<&[u8]>) -> Ordering {
    cmp_bounds(a, b, Ordering::Greater)
}

/// Orders two bounds of one side by key; `wider` is how the wider of two bounds at one key
/// compares (unbounded over bounded, included over excluded): `Less` on a lower side,
/// `Greater` on an upper side.
fn cmp_bounds(a: Bound<&[u8]>, b: Bound<&[u8]>, wider: Ordering) -> Ordering {
    match (a, b) {
        (Bound::Unbounded, Bound::Unbounded) => Ordering::Equal,
        (Bound::Unbounded, _) => wider,
        (_, Bound::Unbounded) => wider.reverse(),
        (Bound::Included(x), Bound::Excluded(y)) => x.cmp(y).then(wider),
        (Bound::Excluded(x), Bound::Included(y)) => x.cmp(y).then(wider.reverse()),
        (Bound::Included(x), Bound::Included(y)) | (Bound::Excluded(x), Bound::Excluded(y)) => {
            x.cmp(y)
        }
    }
}

/// The keys for which `path op literal` is true, when an index can say it exactly: `=`, `<`,
/// `<=`, `>`, `>=` with a non-null literal. A comparison is known only within the literal's
/// kind, so ranges stop at the kind's edges (keys of one kind share their first byte).
fn comparison_bounds(op: CompareOp, literal: &Literal) -> Option<KeyBounds> {
    let tag = match literal {
        Literal::Null => return None,
        Literal::Boolean(_) => TAG_BOOLEAN,
        Literal::Number(_) => TAG_NUMBER,
        Literal::String(_) => TAG_STRING,
    };
    let key = IndexKey::encode(Some(&literal.to_data()));
    let kind_start = Bound::Included(vec![tag]);
    let kind_end = Bound::Excluded(vec![tag + 1]);
    Some(match op {
        CompareOp::Eq => KeyBounds::Equal(key),
        CompareOp::NotEq => return None,
        CompareOp::Lt => KeyBounds::Range { lower: kind_start, upper: Bound::Excluded(key) },
        CompareOp::LtEq => KeyBounds::Range { lower: kind_start, upper: Bound::Included(key) },
        CompareOp::Gt => KeyBounds::Range { lower: Bound::Excluded(key), upper: kind_end },
        CompareOp::GtEq => KeyBounds::Range { lower: Bound::Included(key), upper: kind_end },
    })
}

/// The top-level conjuncts of a condition (`a AND (b AND c)` gives a, b, c).
fn conjuncts(expr: &Expr) -> Vec<&Expr> {
    let mut out = Vec::new();
    let mut stack = vec![expr];
    while let Some(e) = stack.pop() {
        match e {
            Expr::And(operands) => stack.extend(operands.iter().rev()),
            other => out.push(other),
        }
    }
    out
}

/// The index path and bounds a conjunct gives, if an index can answer it exactly.
fn sargable<'e>(conjunct: &'e Expr, indexes: &[Path]) -> Option<(&'e Path, KeyBounds)> {
    match conjunct {
        Expr::Compare { path, op, value } if indexes.contains(path) => {
            Some((path, comparison_bounds(*op, value)?))
        }
        _ => None,
    }
}

impl Query {
    /// Chooses how to run the query given the paths indexed in its collection.
    ///
    /// An index serves the query when a top-level conjunct of WHERE (not under OR or NOT)
    /// compares its path with `=`, `<`, `<=`, `>` or `>=` to a non-null literal (all such
    /// conjuncts on that path narrow the range together), or, failing that, when the first
    /// ORDER BY key is its path (an ordered read of the whole index). Equality beats a range,
    /// then a path that is also the first ORDER BY key, then the order of `indexes`.
    pub fn plan(&self, indexes: &[Path]) -> Plan {
        let conjuncts = self.filter.as_ref().map(conjuncts).unwrap_or_default();
        let first_order_path = self.order_by.first().map(|k| &k.path);

        let mut best: Option<(bool, bool, usize, &Path, KeyBounds)> = None;
        for (rank, path) in indexes.iter().enumerate() {
            let bounds = conjuncts
                .iter()
                .filter_map(|c| sargable(c, indexes).filter(|(p, _)| *p == path))
                .map(|(_, b)| b)
                .reduce(|a, b| a.intersect(&b));
            let Some(bounds) = bounds else { continue };
            let equal = matches!(bounds, KeyBounds::Equal(_));
            let ordered = first_order_path == Some(path);
            let better = match &best {
                None => true,
                Some((e, o, r, _, _)) => {
                    (equal, ordered, std::cmp::Reverse(rank)) > (*e, *o, std::cmp::Reverse(*r))
                }
            };
            if better {
                best = Some((equal, ordered, rank, path, bounds));
            }
        }

        let (path, bounds) = match best {
            Some((_, _, _, path, bounds)) => (path, bounds),
            None => match first_order_path.filter(|p| indexes.contains(p)) {
                Some(path) => (path, KeyBounds::all()),
                None => return Plan { index: None, residual: self.filter.clone() },
            },
        };

        let rest: Vec<Expr> = conjuncts
            .into_iter()
            .filter(|c| !matches!(sargable(c, indexes), Some((p, _)) if p == path))
            .cloned()
            .collect();
        let residual = match rest.len() {
            0 => None,
            1 => rest.into_iter().next(),
            _ => Some(Expr::And(rest)),
        };

        let (direction, order_satisfied) = match self.order_by.as_slice() {
            [only] if &only.path == path => (only.direction, true),
            // One key value: entries come by model id, the order without ORDER BY.
            [] => (Direction::Ascending, matches!(bounds, KeyBounds::Equal(_))),
            _ => (Direction::Ascending, false),
        };
        Plan {
            index: Some(IndexScan { path: path.clone(), bounds, direction, order_satisfied }),
            residual,
        }
    }
}
