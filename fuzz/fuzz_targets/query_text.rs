//! Fuzzes the query parser with any text: no panic, error positions inside the text, paths
//! that print and parse back. The checks are in `concord_fuzz::query::check_query_text`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| concord_fuzz::query::check_query_text(text));
