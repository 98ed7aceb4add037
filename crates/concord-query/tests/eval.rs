//! The reference executor: operators, missing paths, ordering, paging, counts, scan limit.

use concord_ot::{IdGenerator, ReplicaId, Value};
use concord_query::{Candidate, EvalError, Query, SelectedData};
use serde_json::json;

fn models(docs: &[(&str, serde_json::Value)]) -> Vec<(String, Value)> {
    let mut ids = IdGenerator::new(ReplicaId(1), 0);
    docs.iter()
        .map(|(id, doc)| (id.to_string(), Value::from_json(doc, &mut ids).unwrap()))
        .collect()
}

fn candidates(models: &[(String, Value)]) -> impl Iterator<Item = Candidate<'_>> {
    models.iter().enumerate().map(|(i, (id, data))| Candidate {
        id,
        version: i as u64 + 1,
        created: 1000 + i as i64,
        modified: 2000 + i as i64,
        data,
    })
}

fn sample() -> Vec<(String, Value)> {
    models(&[
        (
            "a",
            json!({"name": "Ann", "age": 31, "tags": ["x", "y"], "address": {"city": "Oslo"}, "vip": true}),
        ),
        (
            "b",
            json!({"name": "Bob", "age": 17, "tags": ["y"], "address": {"city": "Bergen"}, "vip": false}),
        ),
        ("c", json!({"name": "Cy", "age": null, "tags": [], "address": {"city": "Oslo"}})),
        ("d", json!({"name": "Di_%", "age": "old", "address": {}})),
        ("e", json!({"name": "eve", "age": 31.0, "tags": ["z"], "vip": true})),
    ])
}

fn ids(text: &str) -> Vec<String> {
    let models = sample();
    let q = Query::parse(text).unwrap();
    q.evaluate(candidates(&models)).rows.into_iter().map(|r| r.id).collect()
}

#[test]
fn comparisons_and_three_valued_logic() {
    assert_eq!(ids("SELECT * FROM p WHERE age = 31"), ["a", "e"]);
    // Null is unknown; 'old' is a string, so not equal to 31.
    assert_eq!(ids("SELECT * FROM p WHERE age != 31"), ["b", "d"]);
    assert_eq!(ids("SELECT * FROM p WHERE age <> 31"), ["b", "d"]);
    assert_eq!(ids("SELECT * FROM p WHERE age = 'old'"), ["d"]);
    assert_eq!(ids("SELECT * FROM p WHERE NOT age < 20"), ["a", "e"], "no order across kinds");
    assert_eq!(ids("SELECT * FROM p WHERE age < 31"), ["b"]);
    assert_eq!(ids("SELECT * FROM p WHERE age <= 31"), ["a", "b", "e"]);
    assert_eq!(ids("SELECT * FROM p WHERE age > 17"), ["a", "e"]);
    assert_eq!(ids("SELECT * FROM p WHERE age >= 17"), ["a", "b", "e"]);
    assert_eq!(ids("SELECT * FROM p WHERE age > 'a'"), ["d"], "strings compare with strings only");
    assert_eq!(ids("SELECT * FROM p WHERE name < 'a'"), ["a", "b", "c", "d"], "by code point");
    assert_eq!(ids("SELECT * FROM p WHERE vip = true"), ["a", "e"]);
    assert_eq!(ids("SELECT * FROM p WHERE NOT vip = true"), ["b"], "NOT unknown is unknown");
    assert_eq!(ids("SELECT * FROM p WHERE age = NULL"), Vec::<String>::new());
    assert_eq!(ids("SELECT * FROM p WHERE NOT age = NULL"), Vec::<String>::new());
    assert_eq!(ids("SELECT * FROM p WHERE vip = true OR age < 20"), ["a", "b", "e"]);
    assert_eq!(ids("SELECT * FROM p WHERE vip = true AND age < 40"), ["a", "e"]);
    // Unknown OR true is true; unknown AND false is false, so NOT of it is true.
    assert_eq!(ids("SELECT * FROM p WHERE vip = true OR name = 'Cy'"), ["a", "c", "e"]);
    assert_eq!(
        ids("SELECT * FROM p WHERE NOT (vip = true AND name = 'zzz')"),
        ["a", "b", "c", "d", "e"]
    );
    assert_eq!(
        ids("SELECT * FROM p WHERE NOT (vip = true AND name = 'eve')"),
        ["a", "b", "c", "d"]
    );
}

#[test]
fn nested_paths_and_arrays() {
    assert_eq!(ids("SELECT * FROM p WHERE address.city = 'Oslo'"), ["a", "c"]);
    assert_eq!(ids("SELECT * FROM p WHERE tags[0] = 'y'"), ["b"]);
    assert_eq!(ids("SELECT * FROM p WHERE tags[1] = 'y'"), ["a"]);
    assert_eq!(ids("SELECT * FROM p WHERE tags[0] IS NULL"), ["c", "d"]);
    assert_eq!(ids("SELECT * FROM p WHERE address.city IS NULL"), ["d", "e"]);
    assert_eq!(ids("SELECT * FROM p WHERE age IS NULL"), ["c"]);
    assert_eq!(ids("SELECT * FROM p WHERE age IS NOT NULL"), ["a", "b", "d", "e"]);
    assert_eq!(ids("SELECT * FROM p WHERE name.first = 'Ann'"), Vec::<String>::new());
}

#[test]
fn in_lists() {
    assert_eq!(ids("SELECT * FROM p WHERE age IN (17, 'old')"), ["b", "d"]);
    assert_eq!(ids("SELECT * FROM p WHERE age NOT IN (17, 'old')"), ["a", "e"]);
    // A NULL in the list makes a non-match unknown, so NOT IN selects nothing.
    assert_eq!(ids("SELECT * FROM p WHERE age IN (17, NULL)"), ["b"]);
    assert_eq!(ids("SELECT * FROM p WHERE age NOT IN (17, NULL)"), Vec::<String>::new());
}

#[test]
fn like_with_wildcards_and_escapes() {
    assert_eq!(ids("SELECT * FROM p WHERE name LIKE 'B%'"), ["b"]);
    assert_eq!(ids("SELECT * FROM p WHERE name LIKE '%y'"), ["c"]);
    assert_eq!(ids("SELECT * FROM p WHERE name LIKE '_o_'"), ["b"]);
    assert_eq!(ids("SELECT * FROM p WHERE name LIKE '%'"), ["a", "b", "c", "d", "e"]);
    assert_eq!(
        ids("SELECT * FROM p WHERE name LIKE 'e%E'"),
        Vec::<String>::new(),
        "case-sensitive"
    );
    assert_eq!(ids("SELECT * FROM p WHERE name NOT LIKE '%n%'"), ["b", "c", "d", "e"]);
    // `_` and `%` unescaped match anything; escaped, only themselves.
    assert_eq!(ids("SELECT * FROM p WHERE name LIKE 'Di__'"), ["d"]);
    assert_eq!(ids("SELECT * FROM p WHERE name LIKE 'Di!_!%' ESCAPE '!'"), ["d"]);
    assert_eq!(ids("SELECT * FROM p WHERE name LIKE 'Ann!%' ESCAPE '!'"), Vec::<String>::new());
    assert_eq!(ids("SELECT * FROM p WHERE age LIKE '%'"), ["d"], "LIKE on a non-string is unknown");
}

#[test]
fn like_matches_code_points_and_backtracks() {
    let p = concord_query::LikePattern::new("_é%ö_", None).unwrap();
    assert!(p.matches("aéxxöz"));
    assert!(p.matches("aéöz"));
    assert!(!p.matches("aéxxö"));
    let p = concord_query::LikePattern::new("%a%a%a%b", None).unwrap();
    assert!(!p.matches(&"a".repeat(2000)));
    assert!(p.matches(&format!("{}b", "a".repeat(2000))));
}

#[test]
fn order_by_several_paths_mixed_kinds_and_ties() {
    // age: a 31, b 17, c null, d 'old', e 31.0 (missing < null < number < string).
    assert_eq!(ids("SELECT * FROM p ORDER BY age"), ["c", "b", "a", "e", "d"]);
    // The id breaks ties in the direction of the last key.
    assert_eq!(ids("SELECT * FROM p ORDER BY age DESC"), ["d", "e", "a", "b", "c"]);
    assert_eq!(ids("SELECT * FROM p ORDER BY age DESC, name"), ["d", "a", "e", "b", "c"]);
    assert_eq!(ids("SELECT * FROM p ORDER BY vip DESC, age"), ["a", "e", "b", "c", "d"]);
    // Missing address.city sorts first.
    assert_eq!(ids("SELECT * FROM p ORDER BY address.city, name DESC"), ["e", "d", "b", "c", "a"]);
    assert_eq!(ids("SELECT * FROM p ORDER BY tags"), ["d", "c", "a", "b", "e"]);
}

#[test]
fn limit_offset_count_and_projection() {
    let models = sample();
    let q = Query::parse("SELECT name, address.city, nope FROM p WHERE age IS NOT NULL ORDER BY name LIMIT 2 OFFSET 1").unwrap();
    let result = q.evaluate(candidates(&models));
    assert_eq!(result.total, 4);
    let got: Vec<_> = result.rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(got, ["b", "d"]);
    let row = &result.rows[0];
    assert_eq!(
        (row.collection.as_str(), row.version, row.created, row.modified),
        ("p", 2, 1001, 2001)
    );
    let SelectedData::Paths(values) = &row.data else { panic!() };
    let json: Vec<_> = values.iter().map(|v| v.as_ref().map(|v| v.to_json())).collect();
    assert_eq!(json, [Some(json!("Bob")), Some(json!("Bergen")), None]);

    let all = Query::parse("SELECT * FROM p LIMIT 1").unwrap().evaluate(candidates(&models));
    assert_eq!(all.total, 5);
    assert_eq!(all.rows[0].data, SelectedData::All(models[0].1.clone()));
    let past = Query::parse("SELECT * FROM p OFFSET 10").unwrap().evaluate(candidates(&models));
    assert_eq!((past.rows.len(), past.total), (0, 5));
    let zero = Query::parse("SELECT * FROM p LIMIT 0").unwrap().evaluate(candidates(&models));
    assert_eq!((zero.rows.len(), zero.total), (0, 5));
}

#[test]
fn pages_are_stable_and_cover_everything() {
    let docs: Vec<_> = (0..50).map(|i| (format!("m{i:02}"), json!({"n": i % 4}))).collect();
    let refs: Vec<_> = docs.iter().map(|(id, d)| (id.as_str(), d.clone())).collect();
    let models = models(&refs);
    let mut seen = Vec::new();
    for page in 0..10 {
        let q =
            Query::parse(&format!("SELECT * FROM c ORDER BY n DESC LIMIT 7 OFFSET {}", page * 7))
                .unwrap();
        // Reversed input: the order must not depend on how candidates arrive.
        let mut c: Vec<_> = candidates(&models).collect();
        c.reverse();
        seen.extend(q.evaluate(c).rows.into_iter().map(|r| r.id));
    }
    let full: Vec<_> = Query::parse("SELECT * FROM c ORDER BY n DESC")
        .unwrap()
        .evaluate(candidates(&models))
        .rows
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(seen, full);
    assert_eq!(full.len(), 50);
    assert_eq!(&full[..3], ["m47", "m43", "m39"]);
}

#[test]
fn scan_limit() {
    let models = sample();
    let q = Query::parse("SELECT * FROM p WHERE age = 31").unwrap();
    assert_eq!(q.evaluate_with_limit(candidates(&models), 5).unwrap().total, 2);
    assert_eq!(
        q.evaluate_with_limit(candidates(&models), 4),
        Err(EvalError::ScanLimit { limit: 4 })
    );
}
