//! Parsing: what the language accepts, what it refuses, and where the error is.

use concord_query::{
    CompareOp, Direction, Expr, Limits, Literal, Path, Position, Projection, Query, QueryError,
    Segment,
};

fn path(text: &str) -> Path {
    Path::parse(text).unwrap()
}

fn at(line: u64, column: u64) -> Option<Position> {
    Some(Position { line, column })
}

#[test]
fn full_query() {
    let q = Query::parse(
        "SELECT name, address.city, tags[0] FROM people \
         WHERE age >= 18 AND (city = 'Oslo' OR NOT vip = true) \
         ORDER BY age DESC, name LIMIT 20 OFFSET 40",
    )
    .unwrap();
    assert_eq!(q.collection, "people");
    assert_eq!(
        q.projection,
        Projection::Paths(vec![path("name"), path("address.city"), path("tags[0]")])
    );
    assert_eq!(q.limit, Some(20));
    assert_eq!(q.offset, 40);
    assert_eq!(q.order_by.len(), 2);
    assert_eq!(q.order_by[0].path, path("age"));
    assert_eq!(q.order_by[0].direction, Direction::Descending);
    assert_eq!(q.order_by[1].direction, Direction::Ascending);
    let Some(Expr::And(conjuncts)) = &q.filter else { panic!("{:?}", q.filter) };
    assert_eq!(
        conjuncts[0],
        Expr::Compare { path: path("age"), op: CompareOp::GtEq, value: Literal::Number(18.0) }
    );
    let Expr::Or(alternatives) = &conjuncts[1] else { panic!("{:?}", conjuncts[1]) };
    assert!(matches!(&alternatives[1], Expr::Not(_)));
}

#[test]
fn star_no_where_and_defaults() {
    let q = Query::parse("select * from notes").unwrap();
    assert_eq!(q.projection, Projection::All);
    assert_eq!(q.filter, None);
    assert!(q.order_by.is_empty());
    assert_eq!((q.limit, q.offset), (None, 0));
}

#[test]
fn paths_nested_indexed_and_quoted() {
    let p = path(r#"a.b[2]."odd key"."with ""quote"""[0]"#);
    assert_eq!(
        p.segments(),
        &[
            Segment::Key("a".into()),
            Segment::Key("b".into()),
            Segment::Index(2),
            Segment::Key("odd key".into()),
            Segment::Key("with \"quote\"".into()),
            Segment::Index(0),
        ]
    );
    // Display writes what parses back to the same path, keywords quoted.
    assert_eq!(Path::parse(&p.to_string()).unwrap(), p);
    let keyword = Path::keys(["order", "x"]).unwrap();
    assert_eq!(keyword.to_string(), r#""order".x"#);
    assert_eq!(Path::parse(&keyword.to_string()).unwrap(), keyword);
}

#[test]
fn literal_on_the_left_is_mirrored() {
    let q = Query::parse("SELECT * FROM t WHERE 5 < x").unwrap();
    assert_eq!(
        q.filter,
        Some(Expr::Compare { path: path("x"), op: CompareOp::Gt, value: Literal::Number(5.0) })
    );
}

#[test]
fn literals() {
    let q = Query::parse(
        "SELECT * FROM t WHERE a = -2.5 AND b = 'it''s' AND c = false AND d <> NULL AND e != 1e3",
    )
    .unwrap();
    let Some(Expr::And(c)) = q.filter else { panic!() };
    let values: Vec<_> = c
        .iter()
        .map(|e| match e {
            Expr::Compare { value, op, .. } => (value.clone(), *op),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        values,
        vec![
            (Literal::Number(-2.5), CompareOp::Eq),
            (Literal::String("it's".into()), CompareOp::Eq),
            (Literal::Boolean(false), CompareOp::Eq),
            (Literal::Null, CompareOp::NotEq),
            (Literal::Number(1000.0), CompareOp::NotEq),
        ]
    );
}

#[test]
fn in_like_is_null() {
    let q = Query::parse(
        "SELECT * FROM t WHERE a IN (1, 'x', NULL) AND b NOT IN (2) AND c LIKE 'a%' \
         AND d NOT LIKE 'x!%' ESCAPE '!' AND e IS NULL AND f IS NOT NULL",
    )
    .unwrap();
    let Some(Expr::And(c)) = q.filter else { panic!() };
    assert!(matches!(&c[0], Expr::In { list, negated: false, .. } if list.len() == 3));
    assert!(matches!(&c[1], Expr::In { negated: true, .. }));
    assert!(matches!(&c[2], Expr::Like { pattern, negated: false, .. } if pattern.text() == "a%"));
    assert!(
        matches!(&c[3], Expr::Like { pattern, negated: true, .. } if pattern.escape() == Some('!'))
    );
    assert_eq!(c[4], Expr::IsNull { path: path("e"), negated: false });
    assert_eq!(c[5], Expr::IsNull { path: path("f"), negated: true });
}

#[test]
fn long_and_chain_is_one_node() {
    let text = format!(
        "SELECT * FROM t WHERE {}",
        (0..500).map(|i| format!("a = {i}")).collect::<Vec<_>>().join(" AND ")
    );
    let q = Query::parse(&text).unwrap();
    assert!(matches!(q.filter, Some(Expr::And(c)) if c.len() == 500));
}

fn unsupported_at(text: &str) -> Option<Position> {
    match Query::parse(text) {
        Err(e @ QueryError::Unsupported { .. }) => {
            assert!(!e.to_string().is_empty());
            e.position()
        }
        other => panic!("{text}: expected Unsupported, got {other:?}"),
    }
}

#[test]
fn refuses_what_the_language_does_not_have() {
    assert_eq!(unsupported_at("SELECT * FROM a JOIN b ON a.x = b.x"), at(1, 22));
    assert_eq!(unsupported_at("SELECT * FROM a, b"), at(1, 18));
    assert_eq!(unsupported_at("SELECT x FROM t GROUP BY x"), at(1, 26));
    assert_eq!(unsupported_at("SELECT * FROM t WHERE x IN (SELECT y FROM u)"), at(1, 23));
    assert_eq!(unsupported_at("SELECT * FROM t WHERE lower(x) = 'a'"), at(1, 23));
    assert_eq!(unsupported_at("SELECT count(*) FROM t"), at(1, 8));
    assert_eq!(unsupported_at("SELECT * FROM t WHERE x = y"), at(1, 23));
    assert_eq!(unsupported_at("SELECT * FROM t WHERE x + 1 = 2"), at(1, 23));
    assert_eq!(unsupported_at("SELECT * FROM t WHERE done"), at(1, 23));
    assert_eq!(unsupported_at("SELECT * FROM t WHERE x BETWEEN 1 AND 2"), at(1, 23));
    assert_eq!(unsupported_at("SELECT * FROM t\nWHERE x ILIKE 'a'"), at(2, 7));
    assert_eq!(unsupported_at("SELECT x AS y FROM t"), at(1, 13));
    assert_eq!(unsupported_at("SELECT * FROM t AS u"), at(1, 15));
    assert!(unsupported_at("SELECT DISTINCT x FROM t").is_some());
    assert!(unsupported_at("SELECT * FROM t ORDER BY x NULLS FIRST").is_some());
    assert!(unsupported_at("DELETE FROM t").is_some());
    unsupported_at("SELECT * FROM t UNION SELECT * FROM u");
    assert!(unsupported_at("SELECT * FROM t; SELECT * FROM u").is_some());
    unsupported_at("WITH c AS (SELECT * FROM t) SELECT * FROM c");
    unsupported_at("SELECT * FROM s.t");
}

#[test]
fn syntax_errors_carry_their_position() {
    let e = Query::parse("SELECT * FROM t WHERE x = 'unterminated").unwrap_err();
    assert!(matches!(e, QueryError::Syntax { .. }), "{e:?}");
    assert_eq!(e.position(), at(1, 27));
    let e = Query::parse("SELECT * FROM t\nWHERE x = = 2").unwrap_err();
    assert!(matches!(e, QueryError::Syntax { .. }), "{e:?}");
    assert_eq!(e.position(), at(2, 11));
    assert!(e.to_string().contains("line 2, column 11"), "{e}");
    let e = Query::parse("").unwrap_err();
    assert!(matches!(e, QueryError::Syntax { .. }), "{e:?}");
}

#[test]
fn invalid_values() {
    for text in [
        "SELECT * FROM t LIMIT -1",
        "SELECT * FROM t LIMIT 1.5",
        "SELECT * FROM t OFFSET 'x'",
        "SELECT * FROM t WHERE x = 1e999",
        "SELECT * FROM t WHERE tags[1.5] = 1",
        "SELECT * FROM t WHERE x LIKE 'a!' ESCAPE '!'",
        "SELECT * FROM t WHERE x LIKE 'a' ESCAPE '!!'",
        "SELECT * FROM t WHERE x LIKE 5",
    ] {
        match Query::parse(text) {
            Err(QueryError::Invalid { position: Some(_), .. })
            | Err(QueryError::Unsupported { position: Some(_), .. }) => {}
            other => panic!("{text}: {other:?}"),
        }
    }
}

/// Runs `f` on a thread with a 2 MiB stack (the default for spawned threads, and what a
/// tokio worker has): hostile queries must get typed errors there, even in a debug build.
fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    std::thread::Builder::new().stack_size(2 << 20).spawn(f).unwrap().join().unwrap();
}

#[test]
fn hostile_sizes_get_typed_errors() {
    on_small_stack(|| {
        let limits = Limits::default();
        let long = format!("SELECT * FROM t WHERE x = '{}'", "a".repeat(limits.max_query_bytes));
        assert!(matches!(Query::parse(&long), Err(QueryError::TooLong { .. })));

        let deep = format!("SELECT * FROM t WHERE {}x = 1{}", "(".repeat(1000), ")".repeat(1000));
        assert!(matches!(Query::parse(&deep), Err(QueryError::TooDeep { .. })));
        let nots = format!("SELECT * FROM t WHERE {}x = 1", "NOT ".repeat(1000));
        let e = Query::parse(&nots).unwrap_err();
        assert!(matches!(e, QueryError::TooDeep { .. }), "{e:?}");
        for n in 0..40 {
            let mixed =
                format!("SELECT * FROM t WHERE {}x = 1{}", "NOT (".repeat(n), ")".repeat(n));
            let _ = Query::parse(&mixed);
            // Every depth up to past the limit: accepted, or refused with a typed error.
            let nots = format!("SELECT * FROM t WHERE {}x = 1", "NOT ".repeat(n));
            let _ = Query::parse(&nots);
        }
        // Alternating AND / OR nests our tree without deep recursion in sqlparser.
        let mut alternating = String::from("x = 1");
        for i in 0..100 {
            let op = if i % 2 == 0 { "AND" } else { "OR" };
            alternating = format!("({alternating}) {op} y = {i}");
        }
        let e = Query::parse(&format!("SELECT * FROM t WHERE {alternating}")).unwrap_err();
        assert!(matches!(e, QueryError::TooDeep { .. }), "{e:?}");

        // Left-deep chains (which sqlparser builds without recursing) are bounded by the token
        // count, and what is within it is walked without overflow.
        let plus = "1 + ".repeat(3500);
        let e = Query::parse(&format!("SELECT * FROM t WHERE x = {plus} 1")).unwrap_err();
        assert!(matches!(e, QueryError::TooManyTokens { .. }), "{e:?}");
        let plus = "1 + ".repeat(2040);
        for text in [
            format!("SELECT * FROM t WHERE x = {plus} 1"),
            format!("SELECT * FROM t ORDER BY {plus} 1 NULLS FIRST"),
            format!("SELECT * FROM t GROUP BY {plus} 1"),
            format!("DELETE FROM t WHERE x = {plus} 1"),
            format!("SELECT {plus} 1 FROM t"),
        ] {
            assert!(Query::parse(&text).is_err());
        }
        let list = vec!["1"; 1500].join(",");
        assert!(matches!(
            Query::parse(&format!("SELECT * FROM t WHERE x IN ({list})")),
            Err(QueryError::TooManyTerms { .. })
        ));
    });

    let small = Limits { max_query_bytes: 100, max_depth: 3, max_terms: 2, max_tokens: 20 };
    assert!(Query::parse_with_limits("SELECT * FROM t WHERE ((x = 1))", &small).is_ok());
    assert!(matches!(
        Query::parse_with_limits("SELECT * FROM t WHERE (((x = 1)))", &small),
        Err(QueryError::TooDeep { .. })
    ));
    assert!(matches!(
        Query::parse_with_limits("SELECT * FROM t WHERE x = 1 OR y = 2 OR z = 3", &small),
        Err(QueryError::TooManyTerms { max: 2 })
    ));
    assert!(matches!(
        Query::parse_with_limits("SELECT * FROM t WHERE x IN (1, 2, 3, 4, 5, 6, 7, 8)", &small),
        Err(QueryError::TooManyTokens { max: 20 })
    ));
}
