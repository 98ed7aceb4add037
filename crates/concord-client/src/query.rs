//! Queries from the client (`models().query(…)`): answered by the server when connected, or
//! by the offline store over the models it holds, with local changes applied, through the
//! same pure evaluator the server uses (`concord-query`), so that both agree on the same
//! data.

use concord_protocol::{ClientRequest, CollectionId, ModelId, ServerResponse};
pub use concord_protocol::{QueryData, QueryRow};
use concord_query::{Candidate, Query};
use concord_sync::host::wire_row;

use crate::domain::ModelService;
use crate::driver::Command;
use crate::error::ClientError;
use crate::permissions::unexpected;

/// Where a query is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueryMode {
    /// By the server when connected, else by the offline store.
    #[default]
    Auto,
    /// By the server only (offline: [`ClientError::Offline`]).
    Server,
    /// By the offline store only, over the models it holds.
    Store,
}

/// Who answered a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryOrigin {
    /// The server: every model of the collection the user may read.
    Server,
    /// The offline store: the models it holds, with local changes applied.
    Store,
}

/// A page of query results.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub rows: Vec<QueryRow>,
    /// Every match, before LIMIT and OFFSET.
    pub total: u64,
    pub origin: QueryOrigin,
    /// How many models were examined (by the server, its index range when it used one).
    pub scanned: u64,
    /// The indexed path the server read, if any.
    pub index: Option<String>,
}

/// One model of the offline store as a query sees it.
#[derive(Debug, Clone)]
pub(crate) struct LocalModel {
    pub(crate) id: ModelId,
    pub(crate) version: u64,
    pub(crate) created: i64,
    pub(crate) modified: i64,
    pub(crate) data: concord_ot::Value,
}

/// Runs `query` over the models of the offline store (its collection's).
pub(crate) fn evaluate_local(query: &Query, models: &[LocalModel]) -> QueryResult {
    let candidates = models.iter().map(|m| Candidate {
        id: m.id.as_str(),
        version: m.version,
        created: m.created,
        modified: m.modified,
        data: &m.data,
    });
    let result = query.evaluate(candidates);
    let collection = CollectionId::new(query.collection.clone()).ok();
    let rows = result
        .rows
        .into_iter()
        .filter_map(|row| {
            let model = ModelId::new(row.id.clone()).ok()?;
            Some(wire_row(row, model, collection.as_ref()?))
        })
        .collect();
    QueryResult {
        rows,
        total: result.total,
        origin: QueryOrigin::Store,
        scanned: models.len() as u64,
        index: None,
    }
}

impl ModelService {
    /// Runs a query (`SELECT … FROM collection …`, `docs/queries.md`): by the server when
    /// connected, else by the offline store. A malformed query fails at once with
    /// [`ClientError::Query`] (its position inside).
    pub async fn query(&self, text: &str) -> Result<QueryResult, ClientError> {
        self.query_with(text, QueryMode::Auto).await
    }

    /// Runs a query where `mode` says.
    pub async fn query_with(
        &self,
        text: &str,
        mode: QueryMode,
    ) -> Result<QueryResult, ClientError> {
        let query = Query::parse(text).map_err(ClientError::Query)?;
        if mode != QueryMode::Store {
            let request = ClientRequest::Query { query: text.to_owned() };
            let asked = self
                .domain
                .call(|reply| Command::Call { request: Box::new(|_| Ok(request)), reply })
                .await;
            match asked {
                Ok(ServerResponse::QueryResult(page)) => {
                    return Ok(QueryResult {
                        rows: page.rows,
                        total: page.total,
                        origin: QueryOrigin::Server,
                        scanned: page.scanned,
                        index: page.index,
                    });
                }
                Ok(other) => return Err(unexpected(&other)),
                Err(ClientError::Offline | ClientError::ConnectionLost)
                    if mode == QueryMode::Auto => {}
                Err(error) => return Err(error),
            }
        }
        self.domain.call(|reply| Command::QueryStore { query: Box::new(query), reply }).await
    }
}
