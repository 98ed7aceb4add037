//! The reference executor: a query over candidate models, in memory.
//!
//! Conditions have three truth values, as in SQL. A comparison, `IN` or `LIKE` whose path is
//! missing or null, or whose literal is `NULL`, is *unknown*. Values of different kinds are
//! never equal (`=` false, `!=` true) but have no order between them (`age > 'x'` is unknown
//! for a number `age`); arrays, objects and dates equal no literal. `LIKE` on a non-string is
//! unknown. `NOT unknown` is unknown,
//! `AND` / `OR` follow Kleene's logic, and a model is selected only when the condition is
//! true. `IS NULL` is never unknown: it is true for a missing path and for null.

use std::cmp::Ordering;

use concord_ot::{Value, ValueData};

use crate::ast::{CompareOp, Direction, Expr, Literal, Path, Projection, Query};
use crate::error::EvalError;
use crate::order::compare;

/// One model offered to a query: its id, metadata and data (the model's root value).
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub version: u64,
    /// Creation time, milliseconds since the Unix epoch.
    pub created: i64,
    /// Time of the last change, milliseconds since the Unix epoch.
    pub modified: i64,
    pub data: &'a Value,
}

/// One selected model.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRow {
    pub id: String,
    pub collection: String,
    pub version: u64,
    pub created: i64,
    pub modified: i64,
    pub data: SelectedData,
}

/// The data a row carries, as the query's projection asks.
#[derive(Debug, Clone, PartialEq)]
pub enum SelectedData {
    /// `SELECT *`: the model's whole root value.
    All(Value),
    /// `SELECT a, b`: the value at each selected path, in the query's order; `None` where the
    /// path is missing.
    Paths(Vec<Option<Value>>),
}

/// A page of results and the number of models that matched in all (before LIMIT and OFFSET).
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub rows: Vec<QueryRow>,
    pub total: u64,
}

/// A truth value of three-valued logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Truth {
    True,
    False,
    Unknown,
}

impl Truth {
    fn from_bool(b: bool) -> Truth {
        if b { Truth::True } else { Truth::False }
    }

    fn not(self) -> Truth {
        match self {
            Truth::True => Truth::False,
            Truth::False => Truth::True,
            Truth::Unknown => Truth::Unknown,
        }
    }
}

impl Expr {
    /// Whether `data` (a model's root value) satisfies the condition: true, not unknown.
    pub fn matches(&self, data: &Value) -> bool {
        self.truth(data) == Truth::True
    }

    pub(crate) fn truth(&self, data: &Value) -> Truth {
        match self {
            Expr::Compare { path, op, value } => compare_truth(path.lookup_data(data), *op, value),
            Expr::In { path, list, negated } => {
                let found = path.lookup_data(data);
                let mut any_unknown = false;
                for item in list {
                    match compare_truth(found, CompareOp::Eq, item) {
                        Truth::True => return Truth::from_bool(!negated),
                        Truth::Unknown => any_unknown = true,
                        Truth::False => {}
                    }
                }
                let truth = if any_unknown { Truth::Unknown } else { Truth::False };
                if *negated { truth.not() } else { truth }
            }
            Expr::Like { path, pattern, negated } => match path.lookup_data(data) {
                Some(ValueData::String(s)) => Truth::from_bool(pattern.matches(s) != *negated),
                _ => Truth::Unknown,
            },
            Expr::IsNull { path, negated } => {
                let null = matches!(path.lookup_data(data), None | Some(ValueData::Null));
                Truth::from_bool(null != *negated)
            }
            Expr::And(operands) => {
                let mut result = Truth::True;
                for operand in operands {
                    match operand.truth(data) {
                        Truth::False => return Truth::False,
                        Truth::Unknown => result = Truth::Unknown,
                        Truth::True => {}
                    }
                }
                result
            }
            Expr::Or(operands) => {
                let mut result = Truth::False;
                for operand in operands {
                    match operand.truth(data) {
                        Truth::True => return Truth::True,
                        Truth::Unknown => result = Truth::Unknown,
                        Truth::False => {}
                    }
                }
                result
            }
            Expr::Not(inner) => inner.truth(data).not(),
        }
    }
}

/// `found op literal`: unknown when either side is missing or null. Otherwise `=` and `!=`
/// are always known (values of different kinds are not equal), and `<`, `<=`, `>`, `>=` are
/// known only between values of the same kind (boolean, number or string).
fn compare_truth(found: Option<&ValueData>, op: CompareOp, literal: &Literal) -> Truth {
    let Some(found) = found.filter(|f| !matches!(f, ValueData::Null)) else {
        return Truth::Unknown;
    };
    if *literal == Literal::Null {
        return Truth::Unknown;
    }
    let comparable = matches!(
        (found, literal),
        (ValueData::Boolean(_), Literal::Boolean(_))
            | (ValueData::Number(_), Literal::Number(_))
            | (ValueData::String(_), Literal::String(_))
    );
    if !comparable {
        return match op {
            CompareOp::Eq => Truth::False,
            CompareOp::NotEq => Truth::True,
            _ => Truth::Unknown,
        };
    }
    let ordering = match (found, literal) {
        (ValueData::Boolean(a), Literal::Boolean(b)) => a.cmp(b),
        (ValueData::String(a), Literal::String(b)) => a.as_str().cmp(b.as_str()),
        _ => compare(Some(found), Some(&literal.to_data())),
    };
    Truth::from_bool(match op {
        CompareOp::Eq => ordering == Ordering::Equal,
        CompareOp::NotEq => ordering != Ordering::Equal,
        CompareOp::Lt => ordering == Ordering::Less,
        CompareOp::LtEq => ordering != Ordering::Greater,
        CompareOp::Gt => ordering == Ordering::Greater,
        CompareOp::GtEq => ordering != Ordering::Less,
    })
}

/// A matching candidate with its ORDER BY values looked up once.
struct Matched<'a> {
    candidate: Candidate<'a>,
    keys: Vec<Option<&'a ValueData>>,
}

/// Where a matching model falls in a query's result order: its ORDER BY values and its id,
/// owned, so that a scan can rank every match while holding the data of none.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    id: String,
    keys: Vec<Option<ValueData>>,
}

impl Placement {
    /// About the bytes the placement holds (its id and ORDER BY values).
    pub fn bytes(&self) -> usize {
        let keys = self.keys.iter().map(|k| k.as_ref().map_or(0, data_bytes)).sum::<usize>();
        std::mem::size_of::<Placement>() + self.id.len() + keys
    }
}

/// The values at `paths` of `data`, copied.
fn select_paths(paths: &[Path], data: &Value) -> SelectedData {
    SelectedData::Paths(paths.iter().map(|p| p.lookup(data).cloned()).collect())
}

/// About the bytes `data` holds: its strings and keys, and a word per node.
pub fn data_bytes(data: &ValueData) -> usize {
    const NODE: usize = std::mem::size_of::<Value>();
    NODE + match data {
        ValueData::Object(properties) => {
            properties.iter().map(|(key, value)| key.len() + data_bytes(&value.data)).sum()
        }
        ValueData::Array(items) => items.iter().map(|item| data_bytes(&item.data)).sum(),
        ValueData::String(text) => text.len(),
        ValueData::Number(_) | ValueData::Boolean(_) | ValueData::Null | ValueData::Date(_) => 0,
    }
}

impl Query {
    /// Whether a model's data satisfies the query's `WHERE` (always, when there is none).
    pub fn matches(&self, data: &Value) -> bool {
        self.filter.as_ref().is_none_or(|f| f.matches(data))
    }

    /// Runs the query over `candidates` (the models of its collection), examining all of them.
    pub fn evaluate<'a>(&self, candidates: impl IntoIterator<Item = Candidate<'a>>) -> QueryResult {
        match self.evaluate_with_limit(candidates, usize::MAX) {
            Ok(result) => result,
            Err(EvalError::ScanLimit { .. }) => unreachable!("no scan reaches usize::MAX models"),
        }
    }

    /// Runs the query over `candidates`, refusing with [`EvalError::ScanLimit`] as soon as it
    /// would examine more than `max_scanned` of them.
    ///
    /// Rows come in ORDER BY order; ties, and queries without ORDER BY, are ordered by model
    /// id, ascending — or descending when the last ORDER BY key is — so pages are stable.
    pub fn evaluate_with_limit<'a>(
        &self,
        candidates: impl IntoIterator<Item = Candidate<'a>>,
        max_scanned: usize,
    ) -> Result<QueryResult, EvalError> {
        let mut matched = Vec::new();
        for (scanned, candidate) in candidates.into_iter().enumerate() {
            if scanned >= max_scanned {
                return Err(EvalError::ScanLimit { limit: max_scanned });
            }
            if self.matches(candidate.data) {
                let keys =
                    self.order_by.iter().map(|k| k.path.lookup_data(candidate.data)).collect();
                matched.push(Matched { candidate, keys });
            }
        }
        let total = matched.len() as u64;

        let offset = usize::try_from(self.offset).unwrap_or(usize::MAX).min(matched.len());
        let end = match self.limit {
            Some(limit) => offset.saturating_add(usize::try_from(limit).unwrap_or(usize::MAX)),
            None => matched.len(),
        }
        .min(matched.len());
        // Only the first `end` rows need sorting: partition them off first.
        let cmp = |a: &Matched<'_>, b: &Matched<'_>| self.compare_matched(a, b);
        if end > 0 && end < matched.len() {
            matched.select_nth_unstable_by(end - 1, cmp);
            matched.truncate(end);
        }
        matched.sort_unstable_by(cmp);

        let rows = matched[offset..end].iter().map(|m| self.row(&m.candidate)).collect();
        Ok(QueryResult { rows, total })
    }

    fn compare_matched(&self, a: &Matched<'_>, b: &Matched<'_>) -> Ordering {
        let (a_keys, b_keys) = (a.keys.iter().copied(), b.keys.iter().copied());
        self.compare_keys((a_keys, a.candidate.id), (b_keys, b.candidate.id))
    }

    /// Two models' order in the result, from their ORDER BY values and ids.
    fn compare_keys<'k>(
        &self,
        (a_keys, a_id): (impl Iterator<Item = Option<&'k ValueData>>, &str),
        (b_keys, b_id): (impl Iterator<Item = Option<&'k ValueData>>, &str),
    ) -> Ordering {
        for (key, (x, y)) in self.order_by.iter().zip(a_keys.zip(b_keys)) {
            let ordering = compare(x, y);
            let ordering = match key.direction {
                Direction::Ascending => ordering,
                Direction::Descending => ordering.reverse(),
            };
            if ordering != Ordering::Equal {
                return ordering;
            }
        }
        let by_id = a_id.cmp(b_id);
        match self.tie_direction() {
            Direction::Ascending => by_id,
            Direction::Descending => by_id.reverse(),
        }
    }

    /// Where the model `id` with `data` falls in this query's result order (whether or not
    /// it matches).
    pub fn placement(&self, id: &str, data: &Value) -> Placement {
        let keys = self.order_by.iter().map(|k| k.path.lookup_data(data).cloned()).collect();
        Placement { id: id.to_owned(), keys }
    }

    /// The result order of two placements, as [`Query::evaluate`] orders rows.
    pub fn compare_placements(&self, a: &Placement, b: &Placement) -> Ordering {
        let (a_keys, b_keys) =
            (a.keys.iter().map(Option::as_ref), b.keys.iter().map(Option::as_ref));
        self.compare_keys((a_keys, &a.id), (b_keys, &b.id))
    }

    /// The direction of the model-id tie-break: that of the last ORDER BY key.
    pub fn tie_direction(&self) -> Direction {
        self.order_by.last().map_or(Direction::Ascending, |k| k.direction)
    }

    /// Where the model `id` with `data` falls against `placement` in the result order, as
    /// [`Query::compare_placements`] of its own placement would say, without copying its
    /// ORDER BY values.
    pub fn compare_with_placement(
        &self,
        id: &str,
        data: &Value,
        placement: &Placement,
    ) -> Ordering {
        let keys = self.order_by.iter().map(|k| k.path.lookup_data(data));
        self.compare_keys((keys, id), (placement.keys.iter().map(Option::as_ref), &placement.id))
    }

    /// What the projection selects of a model's `data`, taking it: `SELECT *` keeps the
    /// value whole without copying it, paths copy only their own values.
    pub fn select(&self, data: Value) -> SelectedData {
        match &self.projection {
            Projection::All => SelectedData::All(data),
            Projection::Paths(paths) => select_paths(paths, &data),
        }
    }

    /// The row `candidate` makes in this query's result: its data as the projection asks.
    pub fn row(&self, candidate: &Candidate<'_>) -> QueryRow {
        let data = match &self.projection {
            Projection::All => SelectedData::All(candidate.data.clone()),
            Projection::Paths(paths) => select_paths(paths, candidate.data),
        };
        QueryRow {
            id: candidate.id.to_owned(),
            collection: self.collection.clone(),
            version: candidate.version,
            created: candidate.created,
            modified: candidate.modified,
            data,
        }
    }
}
