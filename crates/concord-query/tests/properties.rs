//! Property tests: the index key order is the query order, a plan selects exactly what the
//! full condition selects, and placements and selections agree with the rows they stand for.

use std::collections::BTreeMap;

use concord_ot::{ElementId, ReplicaId, Value, ValueData};
use concord_query::{Candidate, IndexKey, Path, Query, order};
use proptest::prelude::*;

fn id() -> ElementId {
    ElementId { replica: ReplicaId(0), counter: 0 }
}

fn leaf() -> impl Strategy<Value = ValueData> {
    prop_oneof![
        Just(ValueData::Null),
        any::<bool>().prop_map(ValueData::Boolean),
        prop_oneof![
            Just(0.0),
            Just(-0.0),
            Just(1.0),
            Just(-1.0),
            (-3i32..3i32).prop_map(f64::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()),
        ]
        .prop_map(ValueData::Number),
        prop_oneof![Just(0i64), Just(-1), Just(1), any::<i64>()].prop_map(ValueData::Date),
        "[a\\x00b\\u{e9}]{0,3}".prop_map(ValueData::String),
    ]
}

fn value_data() -> impl Strategy<Value = ValueData> {
    leaf().prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(|items| ValueData::Array(
                items.into_iter().map(|d| Value::new(id(), d)).collect()
            )),
            prop::collection::btree_map("[ab\\x00]{0,2}", inner, 0..3).prop_map(|entries| {
                ValueData::Object(
                    entries.into_iter().map(|(k, d)| (k, Value::new(id(), d))).collect(),
                )
            }),
        ]
    })
}

fn maybe(strategy: impl Strategy<Value = ValueData>) -> impl Strategy<Value = Option<ValueData>> {
    prop_oneof![1 => Just(None), 8 => strategy.prop_map(Some)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn key_order_is_query_order(a in maybe(value_data()), b in maybe(value_data())) {
        let by_key = IndexKey::encode(a.as_ref()).cmp(&IndexKey::encode(b.as_ref()));
        prop_assert_eq!(by_key, order::compare(a.as_ref(), b.as_ref()));
    }

    /// Scalars alone, so that close pairs (`0` and `-0`, `"a"` and `"a\0"`) come up often.
    #[test]
    fn key_order_is_query_order_for_scalars(a in maybe(leaf()), b in maybe(leaf())) {
        let by_key = IndexKey::encode(a.as_ref()).cmp(&IndexKey::encode(b.as_ref()));
        prop_assert_eq!(by_key, order::compare(a.as_ref(), b.as_ref()));
    }
}

/// Models whose fields `a` and `b` take small values of mixed kinds (or are missing).
fn small_field() -> impl Strategy<Value = Option<ValueData>> {
    maybe(prop_oneof![
        Just(ValueData::Null),
        any::<bool>().prop_map(ValueData::Boolean),
        (-3i32..3).prop_map(|n| ValueData::Number(f64::from(n))),
        "[xy]{0,2}".prop_map(ValueData::String),
        Just(ValueData::Date(1)),
        Just(ValueData::Array(vec![])),
    ])
}

fn model() -> impl Strategy<Value = Value> {
    (small_field(), small_field()).prop_map(|(a, b)| {
        let mut fields = BTreeMap::new();
        for (name, field) in [("a", a), ("b", b)] {
            if let Some(d) = field {
                fields.insert(name.to_owned(), Value::new(id(), d));
            }
        }
        Value::new(id(), ValueData::Object(fields))
    })
}

fn literal() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NULL".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        (-3i32..3).prop_map(|n| n.to_string()),
        "[xy]{0,2}".prop_map(|s| format!("'{s}'")),
    ]
}

fn condition() -> impl Strategy<Value = String> {
    let field = prop_oneof![Just("a"), Just("b")];
    let op = prop_oneof![Just("="), Just("!="), Just("<"), Just("<="), Just(">"), Just(">=")];
    let leaf = prop_oneof![
        4 => (field.clone(), op, literal()).prop_map(|(f, o, l)| format!("{f} {o} {l}")),
        1 => field.clone().prop_map(|f| format!("{f} IS NULL")),
        1 => (field, literal(), literal()).prop_map(|(f, x, y)| format!("{f} IN ({x}, {y})")),
    ];
    leaf.prop_recursive(3, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4)
                .prop_map(|c| format!("({})", c.join(" AND "))),
            prop::collection::vec(inner.clone(), 2..3)
                .prop_map(|c| format!("({})", c.join(" OR "))),
            inner.prop_map(|c| format!("NOT ({c})")),
        ]
    })
}

fn query() -> impl Strategy<Value = String> {
    let order = prop_oneof![
        Just(""),
        Just(" ORDER BY a"),
        Just(" ORDER BY a DESC"),
        Just(" ORDER BY b, a DESC"),
    ];
    (prop::collection::vec(condition(), 1..4), order)
        .prop_map(|(c, o)| format!("SELECT * FROM t WHERE {}{o}", c.join(" AND ")))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// Reading the index range, then checking the residual, selects what the whole condition
    /// selects; and when the plan says the index order is the result order, it is.
    #[test]
    fn plan_is_sound(
        models in prop::collection::vec(model(), 0..24),
        text in query(),
        indexes in prop::sample::subsequence(vec!["a", "b"], 0..=2),
    ) {
        let q = Query::parse(&text).unwrap();
        let indexes: Vec<Path> = indexes.iter().map(|p| Path::parse(p).unwrap()).collect();
        let ids: Vec<String> = (0..models.len()).map(|i| format!("m{i:02}")).collect();
        let candidates = || {
            models.iter().zip(&ids).map(|(data, id)| Candidate { id, version: 1, created: 0, modified: 0, data })
        };
        let expected: Vec<String> = q.evaluate(candidates()).rows.into_iter().map(|r| r.id).collect();

        let plan = q.plan(&indexes);
        let mut through_plan: Vec<(Vec<u8>, &str)> = Vec::new();
        for c in candidates() {
            let key = match &plan.index {
                Some(scan) => IndexKey::encode(scan.path.lookup_data(c.data)),
                None => Vec::new(),
            };
            let in_range = plan.index.as_ref().is_none_or(|s| s.bounds.contains(&key));
            if in_range && plan.residual.as_ref().is_none_or(|r| r.matches(c.data)) {
                through_plan.push((key, c.id));
            }
        }
        let mut found: Vec<&str> = through_plan.iter().map(|(_, id)| *id).collect();
        let mut wanted: Vec<&str> = expected.iter().map(String::as_str).collect();
        if let Some(scan) = plan.index.as_ref().filter(|s| s.order_satisfied) {
            // The index order: by key, then id; read backwards for a descending scan.
            through_plan.sort();
            if scan.direction == concord_query::Direction::Descending {
                through_plan.reverse();
            }
            let in_index_order: Vec<&str> = through_plan.iter().map(|(_, id)| *id).collect();
            prop_assert_eq!(&in_index_order, &wanted, "index order, plan {:?}", plan);
        }
        found.sort_unstable();
        wanted.sort_unstable();
        prop_assert_eq!(found, wanted, "plan {:?}", plan);
    }
}

proptest! {
    /// Comparing a model's data with a placement orders it as its own placement would, and
    /// selecting from owned data gives the row's data.
    #[test]
    fn placements_and_selections_agree_with_rows(
        a in model(),
        b in model(),
        text in prop_oneof![
            Just("SELECT * FROM t ORDER BY a"),
            Just("SELECT a FROM t ORDER BY a DESC, b"),
            Just("SELECT b, a FROM t ORDER BY b DESC"),
            Just("SELECT * FROM t"),
        ],
        ids in prop_oneof![Just(("m1", "m2")), Just(("m2", "m1")), Just(("m1", "m1"))],
    ) {
        let q = Query::parse(text).unwrap();
        let (a_id, b_id) = ids;
        let placed = q.placement(b_id, &b);
        prop_assert_eq!(
            q.compare_with_placement(a_id, &a, &placed),
            q.compare_placements(&q.placement(a_id, &a), &placed)
        );
        let row = q.row(&Candidate { id: a_id, version: 1, created: 0, modified: 0, data: &a });
        prop_assert_eq!(q.select(a.clone()), row.data);
    }
}
