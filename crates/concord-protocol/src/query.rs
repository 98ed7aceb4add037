//! The messages of querying a collection: the query a client sends (`Query`) and the page of
//! results the server answers with. A query reads models without opening them.

use concord_ot::Value;
use serde::{Deserialize, Serialize};

use crate::ids::{CollectionId, ModelId, Timestamp};

/// One model a query selected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryRow {
    pub model: ModelId,
    pub collection: CollectionId,
    pub version: u64,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
    pub data: QueryData,
}

/// The data a row carries, as the query's projection asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum QueryData {
    /// `SELECT *`: the model's whole root value.
    All(Value),
    /// `SELECT a, b`: the value at each path, in the query's order; `None` where it is
    /// missing.
    Paths(Vec<Option<Value>>),
}

/// The answer to `Query`: one page of rows and how many models matched in all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryPage {
    pub rows: Vec<QueryRow>,
    /// Every model the user may read that matched, before LIMIT and OFFSET.
    pub total: u64,
    /// How many models the server examined to answer (index entries or collection members),
    /// those the user may not read included: a query served by an index examines only
    /// the models in the index range.
    pub scanned: u64,
    /// The indexed path the server read, `None` when it scanned the collection.
    pub index: Option<String>,
}
