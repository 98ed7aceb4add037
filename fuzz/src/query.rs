//! Fuzzing of the query language (`concord-query`).
//!
//! - [`check_query_text`]: parsing any text never panics; an error's position lies within
//!   the text; a parsed query's paths print as text that parses back to the same path.
//! - [`check_query_plan`]: over a few small models, a query (generated from the grammar, or
//!   any text) that parses is planned soundly — reading the index bounds (keys from
//!   [`IndexKey::encode`]), then checking the residual, selects exactly the models that
//!   evaluating the whole condition selects, in the result order when the plan says the
//!   index order is it — and the result is consistent: `total` counts every match, and
//!   the rows are the `LIMIT`/`OFFSET` window of the full ordered result.
//! - [`check_online_offline`]: the same query answered online — by the server's query host
//!   (`concord_sync::host::query_reply`: planning, index scan, permission filter, residual,
//!   paging) over a server store holding the models, their index keys and their grants —
//!   and offline — `Query::evaluate` over the models the user may read, as the client's
//!   offline store answers it — gives the same rows, in the same order, and the same total.

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Result, Unstructured};
use concord_ot::{Document, ElementId, ReplicaId, Value, ValueData};
use concord_protocol::{
    CollectionId, ErrorCode, ModelId, ModelSnapshot, PermissionGrants, Permissions, RequestId,
    ServerMessage, ServerResponse, Timestamp, User, UserId,
};
use concord_query::{Candidate, Direction, IndexKey, Path, Projection, Query, QueryError};
use concord_sync::host::{
    CollectionConfig, HostConfig, ModelRecord, QueryLimits, QueryRead, Write, wire_row,
};
use concord_testkit::server_store::MemoryServerStore;

/// Checks one text as a query and as a path.
pub fn check_query_text(text: &str) {
    match Query::parse(text) {
        Ok(query) => {
            let paths = match &query.projection {
                Projection::All => Vec::new(),
                Projection::Paths(paths) => paths.clone(),
            };
            for path in paths.iter().chain(query.order_by.iter().map(|key| &key.path)) {
                check_path_round_trip(path);
            }
        }
        Err(error) => check_position(text, &error),
    }
    match Path::parse(text) {
        Ok(path) => check_path_round_trip(&path),
        Err(error) => check_position(text, &error),
    }
}

fn check_path_round_trip(path: &Path) {
    let printed = path.to_string();
    match Path::parse(&printed) {
        Ok(again) => assert_eq!(&again, path, "{path:?} prints as {printed:?}"),
        Err(error) => panic!("{path:?} prints as {printed:?}, which does not parse: {error}"),
    }
}

/// An error's position names a line of the text and a column within it (or just past its
/// end).
fn check_position(text: &str, error: &QueryError) {
    let Some(position) = error.position() else { return };
    let lines: Vec<&str> = text.split('\n').collect();
    let line = usize::try_from(position.line).unwrap_or(usize::MAX);
    assert!(
        (1..=lines.len()).contains(&line),
        "{error}: line {line} of a text of {} lines: {text:?}",
        lines.len()
    );
    let width = lines[line - 1].chars().count() as u64;
    assert!(
        (1..=width + 1).contains(&position.column),
        "{error}: column {} of a line of {width} characters: {text:?}",
        position.column
    );
}

/// Small models, a query and the indexes declared on the collection; which models only
/// their creator may read, and whether the query is asked by their creator.
#[derive(Debug)]
pub struct PlanInput {
    pub models: Vec<Value>,
    pub text: String,
    pub indexes: Vec<Path>,
    pub private: Vec<bool>,
    pub by_creator: bool,
}

const FIELDS: &[&str] = &["a", "b", "c.d", "e[0]"];

fn id() -> ElementId {
    ElementId { replica: ReplicaId(0), counter: 0 }
}

fn value(data: ValueData) -> Value {
    Value::new(id(), data)
}

/// A small value of any kind, with close pairs (`0`/`-0`, `"x"`/`"x\0"`) likely.
fn field_value(u: &mut Unstructured) -> Result<ValueData> {
    Ok(match u.int_in_range(0..=8)? {
        0 => ValueData::Null,
        1 => ValueData::Boolean(u.arbitrary()?),
        2 => ValueData::Number(f64::from(u.int_in_range(-3i8..=3)?)),
        3 => ValueData::Number(*u.choose(&[-0.0, 0.5, -1.5, 1e300, f64::MIN_POSITIVE])?),
        4 => ValueData::String((*u.choose(&["", "x", "y", "x\0", "xy", "é", "X"])?).to_owned()),
        5 => ValueData::Date(u.int_in_range(-2..=2)?),
        6 => ValueData::Array(
            (0..u.int_in_range(0..=2)?)
                .map(|_| Ok(value(ValueData::Number(f64::from(u.int_in_range(0u8..=2)?)))))
                .collect::<Result<_>>()?,
        ),
        7 => ValueData::Object(BTreeMap::new()),
        _ => ValueData::Number(u.arbitrary()?),
    })
}

fn model(u: &mut Unstructured) -> Result<Value> {
    let mut fields = BTreeMap::new();
    for name in ["a", "b"] {
        if u.ratio(7, 8)? {
            fields.insert(name.to_owned(), value(field_value(u)?));
        }
    }
    if u.arbitrary()? {
        let mut c = BTreeMap::new();
        if u.ratio(3, 4)? {
            c.insert("d".to_owned(), value(field_value(u)?));
        }
        fields.insert("c".to_owned(), value(ValueData::Object(c)));
    }
    if u.arbitrary()? {
        let items = (0..u.int_in_range(0..=2)?)
            .map(|_| Ok(value(field_value(u)?)))
            .collect::<Result<_>>()?;
        fields.insert("e".to_owned(), value(ValueData::Array(items)));
    }
    Ok(value(ValueData::Object(fields)))
}

fn literal(u: &mut Unstructured) -> Result<String> {
    Ok(match u.int_in_range(0..=6)? {
        0 => "NULL".to_owned(),
        1 => (*u.choose(&["true", "false"])?).to_owned(),
        2 => u.int_in_range(-3i8..=3)?.to_string(),
        3 => (*u.choose(&["0.5", "-0.0", "1.5e0", "-1.5", "1e300"])?).to_owned(),
        4 => format!("'{}'", u.choose(&["", "x", "y", "xy", "é", "X", "x%", "_"])?),
        _ => u.int_in_range(0u8..=2)?.to_string(),
    })
}

fn condition(u: &mut Unstructured, depth: u32) -> Result<String> {
    let field = u.choose(FIELDS)?;
    if depth < 3 && u.ratio(1, 3)? {
        let parts = (0..u.int_in_range(2..=3)?)
            .map(|_| condition(u, depth + 1))
            .collect::<Result<Vec<_>>>()?;
        return Ok(match u.int_in_range(0..=2)? {
            0 => format!("({})", parts.join(" AND ")),
            1 => format!("({})", parts.join(" OR ")),
            _ => format!("NOT ({})", parts[0]),
        });
    }
    Ok(match u.int_in_range(0..=5)? {
        0 => format!("{field} IS NULL"),
        1 => format!("{field} IS NOT NULL"),
        2 => format!("{field} IN ({}, {})", literal(u)?, literal(u)?),
        3 => format!("{field} LIKE '{}'", u.choose(&["x%", "%", "_", "x_", "%y"])?),
        4 => format!("{field} NOT IN ({})", literal(u)?),
        _ => {
            let op = u.choose(&["=", "!=", "<>", "<", "<=", ">", ">="])?;
            if u.ratio(1, 5)? {
                format!("{} {op} {field}", literal(u)?)
            } else {
                format!("{field} {op} {}", literal(u)?)
            }
        }
    })
}

/// A query from the grammar: mostly well-formed, over the models' fields.
fn query_text(u: &mut Unstructured) -> Result<String> {
    let projection = if u.arbitrary()? { "*".to_owned() } else { u.choose(FIELDS)?.to_string() };
    let mut text = format!("SELECT {projection} FROM t");
    let conditions =
        (0..u.int_in_range(0..=3)?).map(|_| condition(u, 0)).collect::<Result<Vec<_>>>()?;
    if !conditions.is_empty() {
        text += &format!(" WHERE {}", conditions.join(" AND "));
    }
    let keys = (0..u.int_in_range(0..=2)?)
        .map(|_| Ok(format!("{}{}", u.choose(FIELDS)?, u.choose(&["", " ASC", " DESC"])?)))
        .collect::<Result<Vec<_>>>()?;
    if !keys.is_empty() {
        text += &format!(" ORDER BY {}", keys.join(", "));
    }
    if u.arbitrary()? {
        text += &format!(" LIMIT {}", u.int_in_range(0u8..=5)?);
    }
    if u.arbitrary()? {
        text += &format!(" OFFSET {}", u.int_in_range(0u8..=5)?);
    }
    Ok(text)
}

impl<'a> Arbitrary<'a> for PlanInput {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<PlanInput> {
        let models = (0..u.int_in_range(0..=12)?).map(|_| model(u)).collect::<Result<_>>()?;
        let indexes = FIELDS
            .iter()
            .filter_map(|field| match u.arbitrary::<bool>() {
                Ok(true) => Some(Path::parse(field).expect("a valid path")),
                _ => None,
            })
            .collect();
        let text = if u.ratio(1, 8)? { u.arbitrary()? } else { query_text(u)? };
        let private = (0..12).map(|_| u.ratio(1, 4)).collect::<Result<_>>()?;
        let by_creator = u.ratio(1, 4)?;
        Ok(PlanInput { models, text, indexes, private, by_creator })
    }
}

/// Plans and evaluates the query over the models, and compares.
pub fn check_query_plan(input: &PlanInput) {
    let Ok(query) = Query::parse(&input.text) else { return };
    let ids: Vec<String> = (0..input.models.len()).map(|i| format!("m{i:02}")).collect();
    let candidates = || {
        input.models.iter().zip(&ids).map(|(data, id)| Candidate {
            id,
            version: 1,
            created: 0,
            modified: 0,
            data,
        })
    };
    let result = query.evaluate(candidates());
    let everything = Query { limit: None, offset: 0, ..query.clone() }.evaluate(candidates());
    let ordered: Vec<&str> = everything.rows.iter().map(|row| row.id.as_str()).collect();

    // total and the LIMIT/OFFSET window.
    let matching = candidates().filter(|c| query.matches(c.data)).count();
    assert_eq!(result.total, matching as u64, "total of {:?}", input.text);
    assert_eq!(everything.total, result.total, "total without LIMIT/OFFSET: {:?}", input.text);
    assert_eq!(ordered.len(), matching, "rows without LIMIT/OFFSET: {:?}", input.text);
    let start = usize::try_from(query.offset).unwrap_or(usize::MAX).min(matching);
    let end = match query.limit {
        Some(limit) => start.saturating_add(usize::try_from(limit).unwrap_or(usize::MAX)),
        None => matching,
    }
    .min(matching);
    let window: Vec<&str> = result.rows.iter().map(|row| row.id.as_str()).collect();
    assert_eq!(window, ordered[start..end], "the LIMIT/OFFSET window of {:?}", input.text);

    // The plan selects what the whole condition selects.
    let plan = query.plan(&input.indexes);
    let mut through_plan: Vec<(Vec<u8>, &str)> = Vec::new();
    for candidate in candidates() {
        let key = match &plan.index {
            Some(scan) => IndexKey::encode(scan.path.lookup_data(candidate.data)),
            None => Vec::new(),
        };
        let in_range = plan.index.as_ref().is_none_or(|scan| scan.bounds.contains(&key));
        if in_range && plan.residual.as_ref().is_none_or(|r| r.matches(candidate.data)) {
            through_plan.push((key, candidate.id));
        }
    }
    if let Some(scan) = plan.index.as_ref().filter(|scan| scan.order_satisfied) {
        // The index order: by key, then id; read backwards for a descending scan.
        through_plan.sort();
        if scan.direction == Direction::Descending {
            through_plan.reverse();
        }
        let in_index_order: Vec<&str> = through_plan.iter().map(|(_, id)| *id).collect();
        assert_eq!(in_index_order, ordered, "index order of {:?}, plan {plan:?}", input.text);
    }
    let mut found: Vec<&str> = through_plan.iter().map(|(_, id)| *id).collect();
    let mut wanted = ordered.clone();
    found.sort_unstable();
    wanted.sort_unstable();
    assert_eq!(found, wanted, "{:?} through plan {plan:?}", input.text);
}

/// Gives every value of `value` its own id, so that it is a valid document's root.
fn renumber(value: &Value, next: &mut u64) -> Value {
    *next += 1;
    let id = ElementId { replica: ReplicaId(0), counter: *next };
    let data = match &value.data {
        ValueData::Array(items) => {
            ValueData::Array(items.iter().map(|item| renumber(item, next)).collect())
        }
        ValueData::Object(entries) => ValueData::Object(
            entries.iter().map(|(key, item)| (key.clone(), renumber(item, next))).collect(),
        ),
        other => other.clone(),
    };
    Value::new(id, data)
}

/// The query answered by the server's query host over a store holding the models, and by
/// the offline evaluation over those the asking user may read: the same rows and total
/// (returned; `None` when the text is not a query over a valid collection id).
pub fn check_online_offline(input: &PlanInput) -> Option<u64> {
    let query = Query::parse(&input.text).ok()?;
    let collection = CollectionId::new(query.collection.clone()).ok()?;
    let creator = UserId("creator".into());
    let reader = if input.by_creator { creator.clone() } else { UserId("reader".into()) };
    let mut store = MemoryServerStore::new();
    let mut readable = Vec::new();
    for (i, root) in input.models.iter().enumerate() {
        let model = ModelId::new(format!("m{i:02}")).expect("a valid model id");
        let Ok(data) = Document::new(renumber(root, &mut 0)) else { continue };
        let private = input.private.get(i).copied().unwrap_or(false);
        let grants = PermissionGrants {
            override_collection: private,
            world: if private { Permissions::NONE } else { Permissions::default() },
            ..PermissionGrants::default()
        };
        let record = ModelRecord {
            collection: collection.clone(),
            created_at: Timestamp(i as i64),
            nonce: None,
            creator: Some(creator.clone()),
            grants,
        };
        let keys = (input.indexes.iter())
            .map(|path| (path.clone(), IndexKey::of_document(path, &data)))
            .collect();
        if !private || input.by_creator {
            readable.push((model.clone(), data.to_value(), i as i64));
        }
        let snapshot = ModelSnapshot {
            collection: collection.clone(),
            version: 0,
            created_at: Timestamp(i as i64),
            modified_at: Timestamp(i as i64),
            data,
        };
        store.apply(&Write::CreateModel { model: model.clone(), record, snapshot });
        store.apply(&Write::IndexModel { model, collection: collection.clone(), keys });
    }
    let config = HostConfig {
        collections: BTreeMap::from([(collection.clone(), CollectionConfig::default())]),
        indexes: BTreeMap::from([(collection.clone(), input.indexes.clone())]),
        ..HostConfig::default()
    };
    let user = User { id: reader, display_name: None, anonymous: false };
    let read = QueryRead { request: RequestId(1), user, query: query.clone() };
    let limits =
        QueryLimits { max_scanned: usize::MAX, max_rows: u64::MAX, max_held_bytes: usize::MAX };
    let online = match store.query(&read, &config, &limits) {
        ServerMessage::Response { response: ServerResponse::QueryResult(page), .. } => page,
        other => panic!("{:?} online: {other:?}", input.text),
    };
    let candidates = readable.iter().map(|(id, data, at)| Candidate {
        id: id.as_str(),
        version: 0,
        created: *at,
        modified: *at,
        data,
    });
    let offline = query.evaluate(candidates);
    let offline_rows: Vec<_> = (offline.rows.into_iter())
        .map(|row| {
            let model = ModelId::new(row.id.clone()).expect("a stored model id");
            wire_row(row, model, &collection)
        })
        .collect();
    assert_eq!(online.total, offline.total, "total of {:?} online and offline", input.text);
    assert_eq!(online.rows, offline_rows, "rows of {:?} online and offline", input.text);
    // Within a small budget the server drops the rows it ranks and reads the page again, or
    // refuses the query: never a different answer.
    let tight = QueryLimits { max_held_bytes: 600, ..limits };
    match store.query(&read, &config, &tight) {
        ServerMessage::Response { response: ServerResponse::QueryResult(page), .. } => {
            assert_eq!(page, online, "{:?} within {} bytes", input.text, tight.max_held_bytes);
        }
        ServerMessage::Error { error, .. } => {
            assert_eq!(error.code, ErrorCode::MODEL_TOO_LARGE, "{:?}: {error:?}", input.text);
        }
        other => panic!("{:?} within a budget: {other:?}", input.text),
    }
    Some(online.total)
}
