//! The one total order over model data that ORDER BY, comparisons and index keys share.
//!
//! Kinds first: missing < null < boolean < number < date < string < array < object. Within a
//! kind: `false < true`; numbers by value (`-0` equals `0`); dates by time; strings by Unicode
//! code point (which is UTF-8 byte order); arrays element by element, a prefix first; objects
//! entry by entry in key order, each entry by key then value, a prefix first.

use std::cmp::Ordering;

use concord_ot::ValueData;

/// The rank of a kind in the cross-kind order; `None` is a missing path.
pub(crate) fn kind_rank(value: Option<&ValueData>) -> u8 {
    match value {
        None => 0,
        Some(ValueData::Null) => 1,
        Some(ValueData::Boolean(_)) => 2,
        Some(ValueData::Number(_)) => 3,
        Some(ValueData::Date(_)) => 4,
        Some(ValueData::String(_)) => 5,
        Some(ValueData::Array(_)) => 6,
        Some(ValueData::Object(_)) => 7,
    }
}

/// `-0.0` is `0.0`: the order compares numbers by value, and equal values must have equal keys.
pub(crate) fn normalize_zero(n: f64) -> f64 {
    if n == 0.0 { 0.0 } else { n }
}

/// Compares two values (either may be missing) in the documented total order.
pub fn compare(a: Option<&ValueData>, b: Option<&ValueData>) -> Ordering {
    match (a, b) {
        (Some(a), Some(b)) => compare_present(a, b),
        _ => kind_rank(a).cmp(&kind_rank(b)),
    }
}

fn compare_present(a: &ValueData, b: &ValueData) -> Ordering {
    match (a, b) {
        (ValueData::Null, ValueData::Null) => Ordering::Equal,
        (ValueData::Boolean(a), ValueData::Boolean(b)) => a.cmp(b),
        (ValueData::Number(a), ValueData::Number(b)) => {
            normalize_zero(*a).total_cmp(&normalize_zero(*b))
        }
        (ValueData::Date(a), ValueData::Date(b)) => a.cmp(b),
        (ValueData::String(a), ValueData::String(b)) => a.cmp(b),
        (ValueData::Array(a), ValueData::Array(b)) => {
            for (x, y) in a.iter().zip(b) {
                match compare_present(&x.data, &y.data) {
                    Ordering::Equal => {}
                    other => return other,
                }
            }
            a.len().cmp(&b.len())
        }
        (ValueData::Object(a), ValueData::Object(b)) => {
            for ((ka, va), (kb, vb)) in a.iter().zip(b) {
                match ka.cmp(kb).then_with(|| compare_present(&va.data, &vb.data)) {
                    Ordering::Equal => {}
                    other => return other,
                }
            }
            a.len().cmp(&b.len())
        }
        _ => kind_rank(Some(a)).cmp(&kind_rank(Some(b))),
    }
}
