//! The typed errors of parsing and evaluating queries.

use std::fmt;

/// Where in the query text something is: line and column, both from 1 (columns count
/// characters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Position {
    pub line: u64,
    pub column: u64,
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}, column {}", self.line, self.column)
    }
}

/// Formats " at line L, column C" when there is a position.
struct At(Option<Position>);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(position) => write!(f, " at {position}"),
            None => Ok(()),
        }
    }
}

/// Why a query (or an index path) was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// The text is not well-formed SQL.
    #[error("syntax error{}: {message}", At(*.position))]
    Syntax { message: String, position: Option<Position> },
    /// Well-formed SQL that the query language does not have (a join, GROUP BY, a function…).
    #[error("not supported{}: {message}", At(*.position))]
    Unsupported { message: String, position: Option<Position> },
    /// A supported construct with a value it cannot take (a non-integer LIMIT, an empty LIKE
    /// escape, an array index that is not a non-negative integer…).
    #[error("invalid query{}: {message}", At(*.position))]
    Invalid { message: String, position: Option<Position> },
    /// The query text is longer than [`Limits::max_query_bytes`](crate::Limits).
    #[error("the query is {len} bytes long; at most {max} are allowed")]
    TooLong { len: usize, max: usize },
    /// Brackets, `NOT`s or alternating `AND`/`OR` nest deeper than allowed.
    #[error("the query nests deeper than {max} levels{}", At(*.position))]
    TooDeep { max: usize, position: Option<Position> },
    /// More tokens than [`Limits::max_tokens`](crate::Limits).
    #[error("the query has more than {max} tokens")]
    TooManyTokens { max: usize },
    /// More conditions, list items, paths or ORDER BY keys than allowed.
    #[error("the query has more than {max} terms")]
    TooManyTerms { max: usize },
}

impl QueryError {
    /// Where in the text the error is, when known.
    pub fn position(&self) -> Option<Position> {
        match self {
            QueryError::Syntax { position, .. }
            | QueryError::Unsupported { position, .. }
            | QueryError::Invalid { position, .. }
            | QueryError::TooDeep { position, .. } => *position,
            QueryError::TooLong { .. }
            | QueryError::TooManyTokens { .. }
            | QueryError::TooManyTerms { .. } => None,
        }
    }
}

/// Why an evaluation stopped without a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The query needed to examine more models than it may.
    #[error("the query would examine more than {limit} models")]
    ScanLimit { limit: usize },
}
