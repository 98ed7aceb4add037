//! Concord's query core: the SQL-like query language over a collection's models, pure.
//!
//! It parses `SELECT [paths | *] FROM collection [WHERE …] [ORDER BY …] [LIMIT n] [OFFSET m]`
//! (with `sqlparser`) into a small AST ([`Query`], [`Expr`], [`Path`]), evaluates it over
//! candidate models in memory ([`Query::evaluate`], the reference executor), and plans it
//! against a collection's declared indexes ([`Query::plan`]), with the order-preserving index
//! key encoding ([`IndexKey`]) a sorted store index needs. The language is described in
//! `docs/queries.md`.
//!
//! It is not a store and does no I/O: it reads no clock, opens no file or socket, and checks
//! no permission; the caller passes in the models a user may read. It builds for
//! wasm32-unknown-unknown, so the server and the client's offline store can share it.

mod ast;
mod error;
mod eval;
mod key;
mod like;
pub mod order;
mod parse;
mod plan;

pub use ast::{CompareOp, Direction, Expr, Literal, OrderKey, Path, Projection, Query, Segment};
pub use error::{EvalError, Position, QueryError};
pub use eval::{Candidate, Placement, QueryResult, QueryRow, SelectedData, data_bytes};
pub use key::IndexKey;
pub use like::LikePattern;
pub use parse::Limits;
pub use plan::{IndexScan, KeyBounds, Plan};
