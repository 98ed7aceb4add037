//! Index planning: which index serves a query, its bounds and what is left to check.

use std::ops::Bound;

use concord_ot::ValueData;
use concord_query::{CompareOp, Direction, Expr, IndexKey, KeyBounds, Literal, Path, Query};

fn p(text: &str) -> Path {
    Path::parse(text).unwrap()
}

fn num(n: f64) -> Vec<u8> {
    IndexKey::encode(Some(&ValueData::Number(n)))
}

#[test]
fn equality_on_an_indexed_path() {
    let q = Query::parse("SELECT * FROM t WHERE a = 5 AND b > 'x'").unwrap();
    let plan = q.plan(&[p("a")]);
    let scan = plan.index.unwrap();
    assert_eq!(scan.path, p("a"));
    assert_eq!(scan.bounds, KeyBounds::Equal(num(5.0)));
    assert!(scan.order_satisfied, "one key: entries come by id");
    assert_eq!(
        plan.residual,
        Some(Expr::Compare { path: p("b"), op: CompareOp::Gt, value: Literal::String("x".into()) })
    );
}

#[test]
fn equality_beats_range_and_ranges_intersect() {
    let q = Query::parse("SELECT * FROM t WHERE a > 1 AND a <= 9 AND (b = true) ORDER BY a DESC")
        .unwrap();
    let plan = q.plan(&[p("a"), p("b")]);
    let scan = plan.index.unwrap();
    assert_eq!(scan.path, p("b"), "equality first");
    assert!(!scan.order_satisfied);
    let plan = q.plan(&[p("a")]);
    let scan = plan.index.unwrap();
    assert_eq!(scan.path, p("a"));
    assert_eq!(
        scan.bounds,
        KeyBounds::Range { lower: Bound::Excluded(num(1.0)), upper: Bound::Included(num(9.0)) }
    );
    assert_eq!((scan.direction, scan.order_satisfied), (Direction::Descending, true));
    assert_eq!(
        plan.residual,
        Some(Expr::Compare { path: p("b"), op: CompareOp::Eq, value: Literal::Boolean(true) })
    );
}

#[test]
fn not_under_or_or_not() {
    for text in [
        "SELECT * FROM t WHERE a = 1 OR b = 2",
        "SELECT * FROM t WHERE NOT a = 1",
        "SELECT * FROM t WHERE a != 1",
        "SELECT * FROM t WHERE a = NULL",
        "SELECT * FROM t WHERE a IN (1, 2)",
        "SELECT * FROM t WHERE a LIKE 'x%'",
        "SELECT * FROM t WHERE c = 1",
    ] {
        let q = Query::parse(text).unwrap();
        let plan = q.plan(&[p("a")]);
        assert_eq!(plan.index, None, "{text}");
        assert_eq!(plan.residual, q.filter, "{text}");
    }
}

#[test]
fn order_by_alone_reads_the_whole_index() {
    let q = Query::parse("SELECT * FROM t WHERE b = 1 OR c = 2 ORDER BY a LIMIT 20").unwrap();
    let plan = q.plan(&[p("a")]);
    let scan = plan.index.unwrap();
    assert_eq!(scan.bounds, KeyBounds::all());
    assert!(scan.order_satisfied);
    assert_eq!(plan.residual, q.filter);
    // Two ORDER BY keys: the index gives only the first.
    let q = Query::parse("SELECT * FROM t ORDER BY a, b").unwrap();
    assert!(!q.plan(&[p("a")]).index.unwrap().order_satisfied);
    assert_eq!(Query::parse("SELECT * FROM t ORDER BY b").unwrap().plan(&[p("a")]).index, None);
}

#[test]
fn range_stays_within_the_literals_kind() {
    let q = Query::parse("SELECT * FROM t WHERE a < 3").unwrap();
    let bounds = q.plan(&[p("a")]).index.unwrap().bounds;
    assert!(bounds.contains(&num(-1e300)));
    assert!(!bounds.contains(&num(3.0)));
    assert!(!bounds.contains(&IndexKey::encode(Some(&ValueData::Null))));
    assert!(!bounds.contains(&IndexKey::encode(None)));
    assert!(!bounds.contains(&IndexKey::encode(Some(&ValueData::Boolean(true)))));
    let q = Query::parse("SELECT * FROM t WHERE a >= 'm'").unwrap();
    let bounds = q.plan(&[p("a")]).index.unwrap().bounds;
    assert!(bounds.contains(&IndexKey::encode(Some(&ValueData::String("zzz".into())))));
    assert!(!bounds.contains(&IndexKey::encode(Some(&ValueData::Array(vec![])))));
    // Contradictory conjuncts give an empty range.
    let q = Query::parse("SELECT * FROM t WHERE a = 1 AND a = 2").unwrap();
    let bounds = q.plan(&[p("a")]).index.unwrap().bounds;
    assert!(!bounds.contains(&num(1.0)) && !bounds.contains(&num(2.0)));
}

#[test]
fn a_range_without_order_by_is_not_in_result_order() {
    // Without ORDER BY results come by id; a range yields them by key first.
    let q = Query::parse("SELECT * FROM t WHERE a > 0").unwrap();
    assert!(!q.plan(&[p("a")]).index.unwrap().order_satisfied);
}
