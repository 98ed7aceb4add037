//! Index keys: model data encoded as bytes whose lexicographic order is the query order
//! ([`order::compare`](crate::order::compare)), so a store can keep an index sorted and scan
//! ranges of it.
//!
//! Format (one tag byte, then the payload):
//!
//! | kind    | tag  | payload                                                              |
//! |---------|------|----------------------------------------------------------------------|
//! | missing | 0x01 | —                                                                    |
//! | null    | 0x02 | —                                                                    |
//! | boolean | 0x03 | 0x00 false, 0x01 true                                                |
//! | number  | 0x04 | 8 bytes big-endian: the f64's bits (`-0` as `0`), sign bit flipped for positive numbers, all bits flipped for negative ones |
//! | date    | 0x05 | 8 bytes big-endian: the i64 milliseconds with the sign bit flipped   |
//! | string  | 0x06 | UTF-8 with each 0x00 written 0x00 0xFF, then 0x00 0x01               |
//! | array   | 0x07 | each element's key, then 0x00                                        |
//! | object  | 0x08 | per entry in key order: 0x01, the key as a string payload, the value's key; then 0x00 |
//!
//! Every key is self-delimiting (no key is a prefix of another), so `key ++ model id` sorts by
//! key and then by id: that is how a store keeps one index entry per model.

use concord_ot::{Document, PathSegment, ValueData};

use crate::ast::{Path, Segment};

use crate::order::normalize_zero;

pub(crate) const TAG_MISSING: u8 = 0x01;
pub(crate) const TAG_NULL: u8 = 0x02;
pub(crate) const TAG_BOOLEAN: u8 = 0x03;
pub(crate) const TAG_NUMBER: u8 = 0x04;
pub(crate) const TAG_DATE: u8 = 0x05;
pub(crate) const TAG_STRING: u8 = 0x06;
pub(crate) const TAG_ARRAY: u8 = 0x07;
pub(crate) const TAG_OBJECT: u8 = 0x08;

const END: u8 = 0x00;
const ENTRY: u8 = 0x01;

/// The order-preserving index key encoding (a namespace: it has no values).
#[derive(Debug)]
pub enum IndexKey {}

impl IndexKey {
    /// The key of a value, or of a missing path (`None`).
    pub fn encode(value: Option<&ValueData>) -> Vec<u8> {
        let mut out = Vec::new();
        IndexKey::encode_into(value, &mut out);
        out
    }

    /// The key of the value at `path` in a stored model, read without converting the whole
    /// document (what a store indexes on every change).
    pub fn of_document(path: &Path, document: &Document) -> Vec<u8> {
        let segments: Vec<PathSegment> = path
            .segments()
            .iter()
            .map(|segment| match segment {
                Segment::Key(key) => PathSegment::Key(key.clone()),
                Segment::Index(i) => PathSegment::Index(*i),
            })
            .collect();
        let value = document.element_at(&segments).and_then(|id| document.value(id));
        IndexKey::encode(value.as_ref().map(|v| &v.data))
    }

    /// Appends the key of `value` to `out`.
    pub fn encode_into(value: Option<&ValueData>, out: &mut Vec<u8>) {
        match value {
            None => out.push(TAG_MISSING),
            Some(data) => encode_present(data, out),
        }
    }
}

fn encode_present(data: &ValueData, out: &mut Vec<u8>) {
    match data {
        ValueData::Null => out.push(TAG_NULL),
        ValueData::Boolean(b) => out.extend_from_slice(&[TAG_BOOLEAN, u8::from(*b)]),
        ValueData::Number(n) => {
            out.push(TAG_NUMBER);
            let bits = normalize_zero(*n).to_bits();
            // Negative numbers: flipping every bit reverses their order and puts them below
            // the positives, whose sign bit alone is flipped (the order of `total_cmp`).
            let ordered = if bits >> 63 == 1 { !bits } else { bits | (1 << 63) };
            out.extend_from_slice(&ordered.to_be_bytes());
        }
        ValueData::Date(ms) => {
            out.push(TAG_DATE);
            out.extend_from_slice(&((*ms as u64) ^ (1 << 63)).to_be_bytes());
        }
        ValueData::String(s) => {
            out.push(TAG_STRING);
            encode_string(s, out);
        }
        ValueData::Array(items) => {
            out.push(TAG_ARRAY);
            for item in items {
                encode_present(&item.data, out);
            }
            out.push(END);
        }
        ValueData::Object(entries) => {
            out.push(TAG_OBJECT);
            for (key, value) in entries {
                out.push(ENTRY);
                encode_string(key, out);
                encode_present(&value.data, out);
            }
            out.push(END);
        }
    }
}

/// 0x00 is escaped so that the terminator 0x00 0x01 sorts below every continuation.
fn encode_string(s: &str, out: &mut Vec<u8>) {
    for &byte in s.as_bytes() {
        if byte == 0 {
            out.extend_from_slice(&[0x00, 0xFF]);
        } else {
            out.push(byte);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}
