//! Runs the query targets' checks on stable, without a fuzzer: texts and plan inputs from
//! fixed pseudo-random bytes, and texts near the grammar's edges.

use arbitrary::{Arbitrary, Unstructured};
use concord_fuzz::query::{PlanInput, check_online_offline, check_query_plan, check_query_text};
use concord_query::Query;

/// xorshift64: deterministic bytes without a dependency.
fn bytes(seed: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            *seed as u8
        })
        .collect()
}

#[test]
fn texts_parse_or_fail_with_positions_inside_them() {
    let edges = [
        "",
        "\n",
        "SELECT",
        "SELECT * FROM",
        "SELECT * FROM t WHERE",
        "SELECT * FROM t\nWHERE a = ",
        "SELECT * FROM t WHERE a LIKE 'x' ESCAPE ''",
        "SELECT * FROM t LIMIT -1",
        "SELECT * FROM t ORDER BY a.b[18446744073709551616]",
        "SELECT a.\"é\"[0] FROM t WHERE (((((a = 1)))))",
        "SELECT * FROM t WHERE a = 'unterminated",
        "😀 SELECT\n\n * FROM t WHERE é",
        "a.b[0].\"c\"",
        "a..b",
    ];
    for text in edges {
        check_query_text(text);
    }
    let mut seed = 0x9e37_u64;
    for _ in 0..2000 {
        let data = bytes(&mut seed, 64);
        // Words of the language glued by the bytes, so that parses get somewhere.
        const WORDS: &[&str] = &[
            "SELECT ",
            "* ",
            "FROM ",
            "t ",
            "WHERE ",
            "a ",
            "b.c ",
            "= ",
            "< ",
            "AND ",
            "OR ",
            "NOT ",
            "( ",
            ") ",
            "'x' ",
            "1 ",
            "NULL ",
            "IN ",
            "LIKE ",
            "ORDER BY ",
            "LIMIT ",
            "OFFSET ",
            ", ",
            "\n",
            "[0] ",
            "\"k\" ",
            "IS ",
            "é",
            "-",
            ". ",
        ];
        let text: String = data.iter().map(|b| WORDS[usize::from(*b) % WORDS.len()]).collect();
        check_query_text(&text);
        check_query_text(&String::from_utf8_lossy(&data));
    }
}

#[test]
fn online_and_offline_answers_agree_on_a_private_model() {
    // Two models, the first private to its creator: a reader is answered the second only,
    // online and offline alike; the creator both.
    let empty = concord_ot::Value::new(
        concord_ot::ElementId::new(0, 0),
        concord_ot::ValueData::Object(Default::default()),
    );
    let mut input = PlanInput {
        models: vec![empty.clone(), empty],
        text: "SELECT * FROM t ORDER BY a DESC LIMIT 1".to_owned(),
        indexes: Vec::new(),
        private: vec![true, false],
        by_creator: false,
    };
    assert_eq!(check_online_offline(&input), Some(1));
    input.by_creator = true;
    assert_eq!(check_online_offline(&input), Some(2));
    input.text = "SELECT * FROM".to_owned();
    assert_eq!(check_online_offline(&input), None);
}

#[test]
fn plans_are_sound_on_seeded_inputs() {
    const RUNS: usize = 3000;
    let mut seed = 0x5eed_u64;
    let (mut parsed, mut matched) = (0, 0);
    for _ in 0..RUNS {
        let data = bytes(&mut seed, 512);
        let Ok(input) = PlanInput::arbitrary(&mut Unstructured::new(&data)) else { continue };
        if let Ok(query) = Query::parse(&input.text) {
            parsed += 1;
            let ids: Vec<String> = (0..input.models.len()).map(|i| i.to_string()).collect();
            let candidates = input.models.iter().zip(&ids).map(|(data, id)| {
                concord_query::Candidate { id, version: 1, created: 0, modified: 0, data }
            });
            matched += usize::from(query.evaluate(candidates).total > 0);
        }
        check_query_plan(&input);
        let _ = check_online_offline(&input);
    }
    // The generated queries must mostly parse and select something, or they check little.
    assert!(parsed >= RUNS * 2 / 3, "{parsed} of {RUNS} queries parsed");
    assert!(matched >= RUNS / 4, "{matched} of {RUNS} queries matched a model");
}
