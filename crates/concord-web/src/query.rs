//! Queries for JavaScript: `models().query(sql)` and `models().queryWith(sql, mode)`, as the
//! Rust client's `query` / `query_with`, with rows as plain objects.

use concord_client::{QueryData, QueryMode, QueryOrigin, QueryResult, QueryRow};
use wasm_bindgen::prelude::*;

use crate::{ModelService, WebError, error, to_js};

/// `"auto"` (the server when connected, else the store), `"server"` or `"store"`.
fn mode(name: &str) -> Result<QueryMode, WebError> {
    match name {
        "auto" => Ok(QueryMode::Auto),
        "server" => Ok(QueryMode::Server),
        "store" => Ok(QueryMode::Store),
        other => Err(WebError::invalid(format!(
            "a query mode is \"auto\", \"server\" or \"store\", not {other:?}"
        ))),
    }
}

fn set(object: &js_sys::Object, key: &str, value: &JsValue) {
    // Setting a property on a plain fresh object cannot fail.
    let _ = js_sys::Reflect::set(object, &key.into(), value);
}

/// A row: `select: "all"` with the root as `data`, or `select: "paths"` with the value at
/// each path as `values` (`undefined` where the path is missing, so that a missing path and
/// a `null` stay apart).
fn row(row: QueryRow) -> Result<JsValue, WebError> {
    let object = js_sys::Object::new();
    set(&object, "model", &row.model.as_str().into());
    set(&object, "collection", &row.collection.as_str().into());
    set(&object, "version", &(row.version as f64).into());
    set(&object, "createdAt", &(row.created_at.0 as f64).into());
    set(&object, "modifiedAt", &(row.modified_at.0 as f64).into());
    match row.data {
        QueryData::All(value) => {
            set(&object, "select", &"all".into());
            set(&object, "data", &to_js(&value.to_json())?);
        }
        QueryData::Paths(values) => {
            let list = js_sys::Array::new();
            for value in values {
                list.push(&match value {
                    Some(value) => to_js(&value.to_json())?,
                    None => JsValue::UNDEFINED,
                });
            }
            set(&object, "select", &"paths".into());
            set(&object, "values", &list);
        }
    }
    Ok(object.into())
}

fn result(result: QueryResult) -> Result<JsValue, WebError> {
    let object = js_sys::Object::new();
    let rows = js_sys::Array::new();
    for r in result.rows {
        rows.push(&row(r)?);
    }
    set(&object, "rows", &rows);
    set(&object, "total", &(result.total as f64).into());
    let origin = match result.origin {
        QueryOrigin::Server => "server",
        QueryOrigin::Store => "store",
    };
    set(&object, "origin", &origin.into());
    set(&object, "scanned", &(result.scanned as f64).into());
    set(&object, "index", &result.index.map_or(JsValue::NULL, |index| index.into()));
    Ok(object.into())
}

#[wasm_bindgen]
impl ModelService {
    /// Runs a query (`SELECT … FROM collection …`): by the server when connected, else by
    /// the offline store over the models it holds, with local changes. A malformed query
    /// rejects at once with `invalid_query` (and its `position`).
    #[wasm_bindgen(unchecked_return_type = "QueryResult")]
    pub async fn query(&self, sql: String) -> Result<JsValue, WebError> {
        result(self.domain.models().query(&sql).await.map_err(error)?)
    }

    /// Runs a query where `mode` says: `"server"` rejects with `offline` when offline,
    /// `"store"` never asks the server.
    #[wasm_bindgen(js_name = queryWith, unchecked_return_type = "QueryResult")]
    pub async fn query_with(
        &self,
        sql: String,
        #[wasm_bindgen(unchecked_param_type = "QueryMode")] mode_name: String,
    ) -> Result<JsValue, WebError> {
        let mode = mode(&mode_name)?;
        result(self.domain.models().query_with(&sql, mode).await.map_err(error)?)
    }
}
