//! Transformation rules, one case each, from the language-neutral vectors in `vectors/`.
//!
//! Each case names its rule (`S-IR-3 insert strictly inside a removal is swallowed`), gives
//! two concurrent operations on one element and expects the transformed pair and the
//! element's value after both orders of application. Another implementation can run the
//! same files.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow, bail};
use concord_ot::{
    DiscreteOperation, Document, ElementId, IdGenerator, OperationKind, PathSegment, ReplicaId,
    Value, ValueData, transform_discrete,
};
use serde_json::{Value as Json, json};

#[test]
fn string_rules() -> Result<()> {
    run("string.json")
}

#[test]
fn array_rules() -> Result<()> {
    run("array.json")
}

#[test]
fn object_rules() -> Result<()> {
    run("object.json")
}

#[test]
fn number_boolean_and_date_rules() -> Result<()> {
    run("scalar.json")
}

/// Runs every case of one file and reports all failures by case id.
fn run(file: &str) -> Result<()> {
    let path = format!("{}/tests/vectors/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).with_context(|| path.clone())?;
    let vectors: Json = serde_json::from_str(&text)?;
    let cases = vectors["cases"].as_array().context("a `cases` array")?;
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| check(case).err().map(|e| format!("{}: {e:#}", case["id"])))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 9, "{file} lost its cases");
    Ok(())
}

fn check(case: &Json) -> Result<()> {
    let mut base_ids = IdGenerator::new(ReplicaId(0), 0);
    let initial = Value::from_json(&case["initial"], &mut base_ids)?;
    let root =
        Value::new(base_ids.next(), ValueData::Object(BTreeMap::from([("t".into(), initial)])));
    let doc = Document::new(root)?;
    let target = doc.element_at(&[PathSegment::Key("t".into())]).context("target")?;

    let server = from_vector(&case["server"], target, 1)?;
    let client = from_vector(&case["client"], target, 2)?;
    let (server2, client2) = transform_discrete(server.clone(), client.clone());

    let expected = &case["expected"];
    let want_server = normalize(&expected["server"], target)?;
    let want_client = normalize(&expected["client"], target)?;
    if to_vector(&server2) != want_server {
        bail!("server' is {} but should be {}", to_vector(&server2), want_server);
    }
    if to_vector(&client2) != want_client {
        bail!("client' is {} but should be {}", to_vector(&client2), want_client);
    }

    let want =
        Value::from_json(&expected["result"], &mut IdGenerator::new(ReplicaId(9), 0))?.to_json();
    for (first, second, order) in
        [(&server, &client2, "server, client'"), (&client, &server2, "client, server'")]
    {
        let mut doc = doc.clone();
        doc.apply_discrete(first).with_context(|| format!("{order}: first"))?;
        doc.apply_discrete(second).with_context(|| format!("{order}: second"))?;
        let got = doc.value(target).context("target survives")?.to_json();
        if got != want {
            bail!("applying {order} gives {got}, expected {want}");
        }
    }
    Ok(())
}

/// A vector operation as the JSON form this implementation would write for it.
fn normalize(op: &Json, target: ElementId) -> Result<Json> {
    Ok(to_vector(&from_vector(op, target, 7)?))
}

fn from_vector(op: &Json, target: ElementId, replica: u64) -> Result<DiscreteOperation> {
    let mut ids = IdGenerator::new(ReplicaId(replica), 0);
    let mut value = |field: &str| Value::from_json(&op[field], &mut ids);
    let index =
        |field: &str| op[field].as_u64().map(|i| i as usize).ok_or_else(|| anyhow!("{field}"));
    let text =
        |field: &str| op[field].as_str().map(str::to_owned).ok_or_else(|| anyhow!("{field}"));
    let number = |field: &str| op[field].as_f64().ok_or_else(|| anyhow!("{field}"));
    let kind = match op["op"].as_str().context("op")? {
        "StringSplice" => OperationKind::StringSplice {
            index: index("index")?,
            delete_count: index("deleteCount")?,
            insert: text("insert")?,
        },
        "StringSet" => OperationKind::StringSet { value: text("value")? },
        "ArrayInsert" => {
            OperationKind::ArrayInsert { index: index("index")?, value: value("value")? }
        }
        "ArrayRemove" => OperationKind::ArrayRemove { index: index("index")? },
        "ArrayReplace" => {
            OperationKind::ArrayReplace { index: index("index")?, value: value("value")? }
        }
        "ArrayMove" => OperationKind::ArrayMove { from: index("from")?, to: index("to")? },
        "ArraySet" => match value("values")?.data {
            ValueData::Array(values) => OperationKind::ArraySet { values },
            _ => bail!("values must be an array"),
        },
        "ObjectAddProperty" => {
            OperationKind::ObjectAddProperty { key: text("key")?, value: value("value")? }
        }
        "ObjectSetProperty" => {
            OperationKind::ObjectSetProperty { key: text("key")?, value: value("value")? }
        }
        "ObjectRemoveProperty" => OperationKind::ObjectRemoveProperty { key: text("key")? },
        "ObjectSet" => match value("values")?.data {
            ValueData::Object(values) => OperationKind::ObjectSet { values },
            _ => bail!("values must be an object"),
        },
        "NumberDelta" => OperationKind::NumberDelta { delta: number("delta")? },
        "NumberSet" => OperationKind::NumberSet { value: number("value")? },
        "BooleanSet" => {
            OperationKind::BooleanSet { value: op["value"].as_bool().context("value")? }
        }
        "DateSet" => OperationKind::DateSet { value: op["value"].as_i64().context("value")? },
        other => bail!("unknown operation {other}"),
    };
    let noop = op.get("noop").and_then(Json::as_bool).unwrap_or(false);
    Ok(DiscreteOperation { target, noop, kind })
}

fn to_vector(op: &DiscreteOperation) -> Json {
    let list = |values: &[Value]| Json::Array(values.iter().map(Value::to_json).collect());
    let mut json = match &op.kind {
        OperationKind::StringSplice { index, delete_count, insert } => {
            json!({"op": "StringSplice", "index": index, "deleteCount": delete_count, "insert": insert})
        }
        OperationKind::StringSet { value } => json!({"op": "StringSet", "value": value}),
        OperationKind::ArrayInsert { index, value } => {
            json!({"op": "ArrayInsert", "index": index, "value": value.to_json()})
        }
        OperationKind::ArrayRemove { index } => json!({"op": "ArrayRemove", "index": index}),
        OperationKind::ArrayReplace { index, value } => {
            json!({"op": "ArrayReplace", "index": index, "value": value.to_json()})
        }
        OperationKind::ArrayMove { from, to } => json!({"op": "ArrayMove", "from": from, "to": to}),
        OperationKind::ArraySet { values } => json!({"op": "ArraySet", "values": list(values)}),
        OperationKind::ObjectAddProperty { key, value } => {
            json!({"op": "ObjectAddProperty", "key": key, "value": value.to_json()})
        }
        OperationKind::ObjectSetProperty { key, value } => {
            json!({"op": "ObjectSetProperty", "key": key, "value": value.to_json()})
        }
        OperationKind::ObjectRemoveProperty { key } => {
            json!({"op": "ObjectRemoveProperty", "key": key})
        }
        OperationKind::ObjectSet { values } => {
            let values: serde_json::Map<_, _> =
                values.iter().map(|(k, v)| (k.clone(), v.to_json())).collect();
            json!({"op": "ObjectSet", "values": values})
        }
        OperationKind::NumberDelta { delta } => json!({"op": "NumberDelta", "delta": delta}),
        OperationKind::NumberSet { value } => json!({"op": "NumberSet", "value": value}),
        OperationKind::BooleanSet { value } => json!({"op": "BooleanSet", "value": value}),
        OperationKind::DateSet { value } => json!({"op": "DateSet", "value": value}),
    };
    if op.noop {
        json["noop"] = Json::Bool(true);
    }
    json
}
