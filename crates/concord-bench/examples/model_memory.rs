//! The memory a loaded model takes: builds many documents of one JSON record, as a server
//! holds its loaded models, and prints the bytes per model and per string.
//!
//! `cargo run --release -p concord-bench --example model_memory -- [models]` (default
//! 10,000). The record is a document as apps keep them: a title, a state, an owner, tags,
//! a body of a few paragraphs and ten comments — 27 strings, one of them over a KiB. Memory is
//! the growth of the process's anonymous resident set (`RssAnon`), what a server would pay.

use anyhow::Result;
use concord_bench::process::status_kib;
use concord_ot::{Document, IdGenerator, ReplicaId, Value};
use serde_json::json;

fn record() -> serde_json::Value {
    let comments: Vec<_> = (0..10)
        .map(|i| json!({ "author": format!("user-{i}@example.com"), "text": "Looks good to me, one question on the figures in the second table." }))
        .collect();
    json!({
        "title": "Quarterly report, third quarter",
        "state": "draft",
        "owner": "alice@example.com",
        "tags": ["finance", "q3", "report"],
        "body": "The quarter closed above plan. ".repeat(40),
        "comments": comments,
    })
}

fn main() -> Result<()> {
    let models: usize = std::env::args().nth(1).map_or(Ok(10_000), |n| n.parse())?;
    let json = record();
    let strings = count_strings(&json);
    let before = status_kib("self", "RssAnon:")?;
    let mut held = Vec::with_capacity(models);
    for i in 0..models {
        let mut ids = IdGenerator::new(ReplicaId(i as u64), 0);
        held.push(Document::new(Value::from_json(&json, &mut ids)?)?);
    }
    let grown = status_kib("self", "RssAnon:")?.saturating_sub(before);
    let per_model = (grown * 1024) as f64 / models as f64;
    println!(
        "{models} models of {strings} strings each: {per_model:.0} bytes per model, \
         {:.0} per string on average",
        per_model / strings as f64
    );
    drop(held);
    Ok(())
}

fn count_strings(json: &serde_json::Value) -> usize {
    match json {
        serde_json::Value::String(_) => 1,
        serde_json::Value::Array(items) => items.iter().map(count_strings).sum(),
        serde_json::Value::Object(fields) => fields.values().map(count_strings).sum(),
        _ => 0,
    }
}
