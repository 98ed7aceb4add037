//! Answering a query over a collection: what a `Query` request returns, decided here over
//! whatever store holds the models and their indexes ([`QuerySource`]).
//!
//! The session host parses the query (a malformed one is refused there with its position);
//! the caller then answers it from durable state with [`query_reply`]. The plan comes from
//! `concord-query` ([`Query::plan`]) against the collection's declared indexes
//! ([`HostConfig::indexes`]): the source reads one index range, or the whole collection.
//! Every model the source yields counts against [`QueryLimits::max_scanned`] (a typed
//! `query_scan_limit` error past it); a model the user may not read is skipped before its
//! data is loaded and is neither selected nor counted in the total.

use concord_ot::{Document, Value};
use concord_protocol::{
    CollectionId, ErrorCode, ErrorReply, ModelId, QueryData, QueryPage, QueryRow, RequestId,
    ServerMessage, ServerResponse, Timestamp, User,
};
use concord_query::{IndexScan, Placement, Query, QueryError, SelectedData, data_bytes};

use super::{CollectionConfig, HostConfig, ModelRecord, ReadFailure, effective, reply};

/// What one query may cost the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryLimits {
    /// Models (index entries or collection members) one query may examine.
    pub max_scanned: usize,
    /// Rows one answer carries at most, whatever the query's LIMIT (the total still counts
    /// every match, so a client pages on with OFFSET).
    pub max_rows: u64,
    /// About the most bytes one query holds while it runs: the ORDER BY values of the
    /// matches it ranks (when no index gives the order), and its page's rows. Past it the
    /// query is refused with `model_too_large`, never answered in part.
    pub max_held_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> QueryLimits {
        QueryLimits { max_scanned: 100_000, max_rows: 1_000, max_held_bytes: 64 * 1024 * 1024 }
    }
}

/// A parsed query the session host accepted, to be answered from durable state.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryRead {
    pub request: RequestId,
    /// Whose permissions decide which models appear.
    pub user: User,
    pub query: Query,
}

/// A model's current state as a store holds it, for a query.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryModelData {
    pub version: u64,
    pub created_at: Timestamp,
    pub modified_at: Timestamp,
    pub data: Value,
}

impl QueryModelData {
    /// The state of a document at `version`.
    pub fn of(document: &Document, version: u64, created: Timestamp, modified: Timestamp) -> Self {
        QueryModelData {
            version,
            created_at: created,
            modified_at: modified,
            data: document.to_value(),
        }
    }
}

/// One model a source offers: its id and record at once, its data only when asked (a
/// model the user may not read, or one only counted, is never loaded).
pub trait QueryEntry {
    fn model(&self) -> &ModelId;
    fn record(&self) -> &ModelRecord;
    fn load(&mut self) -> Result<QueryModelData, ReadFailure>;
}

/// The models of a domain's collections and their indexes, as a store holds them. A failed
/// read says whether the store could not be reached (the query is answered `unavailable`) or
/// failed itself.
pub trait QuerySource {
    /// A collection's stored settings.
    fn collection(
        &mut self,
        collection: &CollectionId,
    ) -> Result<Option<CollectionConfig>, ReadFailure>;
    /// Offers the models of `collection` to `visit` until it returns `false`: with `index`,
    /// those whose key at the index's path is within its bounds, by key then model id in the
    /// index's direction; without, every model of the collection by model id.
    fn scan(
        &mut self,
        collection: &CollectionId,
        index: Option<&IndexScan>,
        visit: &mut dyn FnMut(&mut dyn QueryEntry) -> Result<bool, ReadFailure>,
    ) -> Result<(), ReadFailure>;
    /// The data of a model the scan offered, read again in the same state, for a row of the
    /// page whose data the scan did not keep.
    fn model(&mut self, model: &ModelId) -> Result<QueryModelData, ReadFailure>;
}

/// The error a malformed query gets: `invalid_query`, with its position as `line` and
/// `column` details when known.
pub fn invalid_query(error: &QueryError) -> ErrorReply {
    let reply = reply(ErrorCode::INVALID_QUERY, error.to_string());
    match error.position() {
        Some(at) => reply
            .with_detail("line", at.line.to_string())
            .with_detail("column", at.column.to_string()),
        None => reply,
    }
}

/// The answer to `read` from `source`: a `QueryResult`, or a typed error
/// (`query_scan_limit`, `collection_not_found` for a collection neither configured nor
/// stored when the server does not create them, `unavailable` for a store that cannot be
/// reached, `internal` for a failing store).
pub fn query_reply(
    read: &QueryRead,
    config: &HostConfig,
    limits: &QueryLimits,
    source: &mut dyn QuerySource,
) -> ServerMessage {
    let to = read.request;
    match answer(read, config, limits, source) {
        Ok(page) => ServerMessage::Response { to, response: ServerResponse::QueryResult(page) },
        Err(error) => ServerMessage::Error { to: Some(to), error },
    }
}

/// Why a scan stopped early.
enum Stop {
    ScanLimit,
    /// Ranking the matches would hold more than `max_held_bytes` of ORDER BY values.
    OrderTooLarge,
    /// The page's rows would take more than `max_held_bytes`.
    PageTooLarge,
    Store(ReadFailure),
}

/// A match the scan holds, and its row while the budget allows (dropped, to be read again
/// at the end, once the rows held outgrow it).
struct Held {
    model: ModelId,
    row: Option<QueryRow>,
    /// About the bytes it holds, measured once.
    bytes: usize,
}

impl Held {
    fn new(model: ModelId, row: Option<QueryRow>) -> Held {
        let bytes = model.as_str().len() + row.as_ref().map_or(0, row_bytes);
        Held { model, row, bytes }
    }

    fn drop_row(&mut self) {
        if let Some(row) = self.row.take() {
            self.bytes -= row_bytes(&row);
        }
    }
}

/// A match ranked by the query's order, when no index gives it.
struct Ranked {
    placement: Placement,
    held: Held,
}

impl Ranked {
    fn bytes(&self) -> usize {
        self.placement.bytes() + self.held.bytes
    }
}

/// About the bytes a row's data holds.
fn row_bytes(row: &QueryRow) -> usize {
    match &row.data {
        QueryData::All(value) => data_bytes(&value.data),
        QueryData::Paths(values) => {
            values.iter().flatten().map(|value| data_bytes(&value.data)).sum()
        }
    }
}

/// The matches a scan holds, within a byte budget: in index order only those of the page;
/// ranked, fewer than `2 × window` (cut back to the best `window` whenever they reach that,
/// so each costs O(1) on average), and none that ranks after the best `window` of the last
/// cut.
struct Matches<'q> {
    query: &'q Query,
    /// In index order: the page's matches, in order.
    in_order: Vec<Held>,
    /// Ranked: the best matches so far, in no particular order.
    ranked: Vec<Ranked>,
    /// The last of the best `window` at the last cut: a match after it cannot reach the
    /// page, so its row is never built.
    threshold: Option<Placement>,
    window: usize,
    bytes: usize,
    max_bytes: usize,
    /// Whether rows are built as models are found; off once they outgrew the budget (the
    /// page's are then read again at the end).
    rows: bool,
}

impl Matches<'_> {
    /// Whether the ranked match `id` with `data` may still reach the page.
    fn may_place(&self, id: &str, data: &Value) -> bool {
        let before = |threshold| self.query.compare_with_placement(id, data, threshold).is_lt();
        self.window > 0 && self.threshold.as_ref().is_none_or(before)
    }

    /// Holds a match of the page, in index order.
    fn hold(&mut self, held: Held) -> Result<(), Stop> {
        self.bytes += held.bytes;
        self.in_order.push(held);
        // Only the page's rows are held: the page alone is too large.
        if self.bytes > self.max_bytes { Err(Stop::PageTooLarge) } else { Ok(()) }
    }

    /// Holds a ranked match, dropping rows, then refusing, past the budget.
    fn rank(&mut self, ranked: Ranked) -> Result<(), Stop> {
        self.bytes += ranked.bytes();
        self.ranked.push(ranked);
        if self.ranked.len() >= self.window.saturating_mul(2) {
            self.cut();
        }
        if self.bytes > self.max_bytes && self.rows {
            self.rows = false;
            self.ranked.iter_mut().for_each(|ranked| ranked.held.drop_row());
            self.bytes = self.ranked.iter().map(Ranked::bytes).sum();
        }
        if self.bytes > self.max_bytes { Err(Stop::OrderTooLarge) } else { Ok(()) }
    }

    /// Keeps the best `window` ranked matches, noting the last of them.
    fn cut(&mut self) {
        let query = self.query;
        if self.window < self.ranked.len() {
            self.ranked.select_nth_unstable_by(self.window.saturating_sub(1), |a, b| {
                query.compare_placements(&a.placement, &b.placement)
            });
            self.ranked.truncate(self.window);
            self.threshold = self.ranked.last().map(|last| last.placement.clone());
        }
        self.bytes = self.ranked.iter().map(Ranked::bytes).sum();
    }

    /// The ranked matches from `offset` on, in result order.
    fn page(mut self, offset: usize) -> Vec<Held> {
        self.cut();
        let query = self.query;
        self.ranked.sort_unstable_by(|a, b| query.compare_placements(&a.placement, &b.placement));
        self.ranked.into_iter().skip(offset).map(|ranked| ranked.held).collect()
    }
}

fn answer(
    read: &QueryRead,
    config: &HostConfig,
    limits: &QueryLimits,
    source: &mut dyn QuerySource,
) -> Result<QueryPage, ErrorReply> {
    let failed = |e: ReadFailure| reply(e.code(), format!("the query failed: {e}"));
    let mut query = read.query.clone();
    query.limit = Some(query.limit.map_or(limits.max_rows, |l| l.min(limits.max_rows)));
    let Ok(collection) = CollectionId::new(query.collection.clone()) else {
        return Err(reply(
            ErrorCode::INVALID_QUERY,
            format!("{:?} is not a collection id", query.collection),
        ));
    };
    let settings = match config.collections.get(&collection) {
        Some(settings) => settings.clone(),
        None => match source.collection(&collection).map_err(failed)? {
            Some(settings) => settings,
            // An unknown collection has no models: an empty answer, unless the server only
            // knows configured collections.
            None if config.auto_create_collections => CollectionConfig::default(),
            None => {
                return Err(reply(
                    ErrorCode::COLLECTION_NOT_FOUND,
                    format!("no collection {collection}"),
                ));
            }
        },
    };
    let indexes = config.indexes.get(&collection).map(Vec::as_slice).unwrap_or_default();
    let plan = query.plan(indexes);
    let offset = usize::try_from(query.offset).unwrap_or(usize::MAX);
    let limit = query.limit.map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
    let window = offset.saturating_add(limit);
    // With the index order as the result order, the page is the matches at positions
    // `offset..window` of the scan; otherwise matches are ranked as they come, keeping the
    // best `window`. Either way the data of other models is read (to match it), never held.
    let ordered = plan.index.as_ref().is_some_and(|scan| scan.order_satisfied);
    let needs_data = plan.residual.is_some() || !ordered;

    let mut scanned = 0usize;
    let mut total = 0usize;
    let mut matches = Matches {
        query: &query,
        in_order: Vec::new(),
        ranked: Vec::new(),
        threshold: None,
        window,
        bytes: 0,
        max_bytes: limits.max_held_bytes,
        rows: true,
    };
    let mut stop = None;
    let mut visit = |entry: &mut dyn QueryEntry| -> Result<bool, ReadFailure> {
        if scanned >= limits.max_scanned {
            stop = Some(Stop::ScanLimit);
            return Ok(false);
        }
        scanned += 1;
        let record = entry.record();
        if !effective(&read.user, record.creator.as_ref(), &record.grants, &settings).read {
            return Ok(true);
        }
        let position = total;
        let on_page = (offset..window).contains(&position);
        if ordered && !needs_data {
            total += 1;
            if !on_page {
                return Ok(true);
            }
        }
        let data = match entry.load() {
            Ok(data) => data,
            Err(e) => {
                stop = Some(Stop::Store(e));
                return Ok(false);
            }
        };
        if needs_data {
            if !query.matches(&data.data) {
                return Ok(true);
            }
            total += 1;
            if ordered && !on_page {
                return Ok(true);
            }
        }
        if !ordered && !matches.may_place(entry.model().as_str(), &data.data) {
            return Ok(true);
        }
        let model = entry.model().clone();
        let placement = (!ordered).then(|| query.placement(model.as_str(), &data.data));
        let row = matches.rows.then(|| page_row(&query, model.clone(), &collection, data));
        let held = Held::new(model, row);
        let held = match placement {
            Some(placement) => matches.rank(Ranked { placement, held }),
            None => matches.hold(held),
        };
        if let Err(why) = held {
            stop = Some(why);
            return Ok(false);
        }
        Ok(true)
    };
    source.scan(&collection, plan.index.as_ref(), &mut visit).map_err(failed)?;
    match stop {
        Some(Stop::ScanLimit) => {
            return Err(reply(
                ErrorCode::QUERY_SCAN_LIMIT,
                format!(
                    "the query would examine more than {} models of {collection}; \
                     declare an index or narrow the condition",
                    limits.max_scanned
                ),
            )
            .with_detail("limit", limits.max_scanned.to_string()));
        }
        Some(Stop::OrderTooLarge) => return Err(too_large(limits, &collection, true)),
        Some(Stop::PageTooLarge) => return Err(too_large(limits, &collection, false)),
        Some(Stop::Store(e)) => return Err(failed(e)),
        None => {}
    }

    let held = if ordered { matches.in_order } else { matches.page(offset) };
    let mut rows = Vec::with_capacity(held.len());
    let mut bytes = 0usize;
    for Held { model, row, .. } in held {
        let row = match row {
            Some(row) => row,
            // Dropped to stay within the budget: read again, in the same snapshot.
            None => {
                let data = source.model(&model).map_err(failed)?;
                page_row(&query, model, &collection, data)
            }
        };
        bytes += row.model.as_str().len() + row_bytes(&row);
        if bytes > limits.max_held_bytes {
            return Err(too_large(limits, &collection, false));
        }
        rows.push(row);
    }
    Ok(QueryPage {
        rows,
        total: total as u64,
        scanned: scanned as u64,
        index: plan.index.as_ref().map(|scan| scan.path.to_string()),
    })
}

/// The row of `model` in an answer: its `data` as the query's projection asks, taken.
fn page_row(
    query: &Query,
    model: ModelId,
    collection: &CollectionId,
    data: QueryModelData,
) -> QueryRow {
    QueryRow {
        model,
        collection: collection.clone(),
        version: data.version,
        created_at: data.created_at,
        modified_at: data.modified_at,
        data: wire_data(query.select(data.data)),
    }
}

/// The refusal of a query that would hold more than the server allows: ranking its matches
/// (`ordering`), or its page's rows.
fn too_large(limits: &QueryLimits, collection: &CollectionId, ordering: bool) -> ErrorReply {
    let max = limits.max_held_bytes;
    let message = if ordering {
        format!(
            "ranking the matches of this query in {collection} would hold more than {max} \
             bytes of ORDER BY values; declare an index on the ORDER BY path or narrow the \
             condition"
        )
    } else {
        format!(
            "the rows of this page of {collection} would take more than {max} bytes; ask for \
             fewer rows (LIMIT) or fewer paths"
        )
    };
    reply(ErrorCode::MODEL_TOO_LARGE, message).with_detail("limit", max.to_string())
}

/// A reference evaluator's row (of `model`) as the protocol carries it.
pub fn wire_row(
    row: concord_query::QueryRow,
    model: ModelId,
    collection: &CollectionId,
) -> QueryRow {
    QueryRow {
        model,
        collection: collection.clone(),
        version: row.version,
        created_at: Timestamp(row.created),
        modified_at: Timestamp(row.modified),
        data: wire_data(row.data),
    }
}

fn wire_data(data: SelectedData) -> QueryData {
    match data {
        SelectedData::All(value) => QueryData::All(value),
        SelectedData::Paths(values) => QueryData::Paths(values),
    }
}

#[cfg(test)]
mod tests {
    use concord_ot::{IdGenerator, ReplicaId};
    use concord_protocol::{PermissionGrants, UserId};

    use super::*;

    /// Three models of `notes`; the store fails as `failure` says once `reads` loads are
    /// answered, or at once when it lists the collection with `reads` 0 and `scan_fails`.
    struct Store {
        models: Vec<(ModelId, ModelRecord)>,
        reads: usize,
        scan_fails: bool,
        failure: ReadFailure,
    }

    struct Entry<'a> {
        model: ModelId,
        record: ModelRecord,
        store: &'a mut usize,
        failure: &'a ReadFailure,
    }

    /// One read of a model's data `{"n": 1}`, or the failure once `reads` ran out.
    fn read(reads: &mut usize, failure: &ReadFailure) -> Result<QueryModelData, ReadFailure> {
        if *reads == 0 {
            return Err(failure.clone());
        }
        *reads -= 1;
        let mut ids = IdGenerator::new(ReplicaId(1), 0);
        let data = Value::from_json(&serde_json::json!({"n": 1}), &mut ids).unwrap();
        Ok(QueryModelData { version: 1, created_at: Timestamp(0), modified_at: Timestamp(0), data })
    }

    impl QueryEntry for Entry<'_> {
        fn model(&self) -> &ModelId {
            &self.model
        }
        fn record(&self) -> &ModelRecord {
            &self.record
        }
        fn load(&mut self) -> Result<QueryModelData, ReadFailure> {
            read(self.store, self.failure)
        }
    }

    impl QuerySource for Store {
        fn collection(
            &mut self,
            _: &CollectionId,
        ) -> Result<Option<CollectionConfig>, ReadFailure> {
            Ok(None)
        }
        fn scan(
            &mut self,
            _: &CollectionId,
            _: Option<&IndexScan>,
            visit: &mut dyn FnMut(&mut dyn QueryEntry) -> Result<bool, ReadFailure>,
        ) -> Result<(), ReadFailure> {
            if self.scan_fails {
                return Err(self.failure.clone());
            }
            for (model, record) in &self.models {
                let (model, record) = (model.clone(), record.clone());
                let store = &mut self.reads;
                let mut entry = Entry { model, record, store, failure: &self.failure };
                if !visit(&mut entry)? {
                    break;
                }
            }
            Ok(())
        }
        fn model(&mut self, _: &ModelId) -> Result<QueryModelData, ReadFailure> {
            read(&mut self.reads, &self.failure)
        }
    }

    fn store(reads: usize, scan_fails: bool, unavailable: bool) -> Store {
        let record = ModelRecord {
            collection: CollectionId::new("notes").unwrap(),
            created_at: Timestamp(0),
            nonce: None,
            creator: None,
            grants: PermissionGrants::default(),
        };
        let models = ["a", "b", "c"].map(|id| (ModelId::new(id).unwrap(), record.clone()));
        let failure = ReadFailure { unavailable, message: "connection reset".into() };
        Store { models: models.into(), reads, scan_fails, failure }
    }

    fn answer(source: &mut Store) -> ServerMessage {
        let user = User { id: UserId("u".into()), display_name: None, anonymous: false };
        let read = QueryRead {
            request: RequestId(3),
            user,
            query: Query::parse("SELECT n FROM notes").unwrap(),
        };
        query_reply(&read, &HostConfig::default(), &QueryLimits::default(), source)
    }

    #[test]
    fn a_store_failing_midway_is_answered_unavailable_or_internal_as_it_says() {
        for (unavailable, code) in [(true, ErrorCode::UNAVAILABLE), (false, ErrorCode::INTERNAL)] {
            // Failing to list the collection, then at each model's load.
            let failing = [(0, true), (0, false), (1, false), (2, false)];
            for (reads, scan_fails) in failing {
                match answer(&mut store(reads, scan_fails, unavailable)) {
                    ServerMessage::Error { to: Some(RequestId(3)), error } => {
                        assert_eq!(error.code, code, "after {reads} loads");
                        assert!(error.message.contains("connection reset"), "{error:?}");
                    }
                    other => panic!("after {reads} loads: {other:?}"),
                }
            }
            match answer(&mut store(3, false, unavailable)) {
                ServerMessage::Response { response: ServerResponse::QueryResult(page), .. } => {
                    assert_eq!((page.rows.len(), page.total), (3, 3));
                }
                other => panic!("{other:?}"),
            }
        }
    }
}
