//! The store behind string elements.
//!
//! A text takes one of two forms, and only this module knows which:
//! - **Short** texts, up to [`SHORT_MAX`] bytes, are a plain `String`. Most strings of a JSON
//!   model are short (names, titles, states); an edit of a short text moves at most a KiB.
//! - **Long** texts are a [`Rope`]: chunks of at most a KiB, found through an array of their
//!   lengths in chars.
//!
//! A text moves between the forms as it is edited; the form never shows in its content.

use std::fmt;
use std::ops::Range;

use crate::rope::{Rope, byte_range, same_bytes};

/// The longest text, in bytes, kept as a plain `String`.
const SHORT_MAX: usize = 1024;

/// A rope shrunk below this many bytes becomes a `String` again: half of [`SHORT_MAX`], so
/// that a text edited around one length does not move back and forth.
const SHORT_AGAIN: usize = SHORT_MAX / 2;

/// A string element's content. Indices count `char`s.
#[derive(Clone)]
pub(crate) struct Text {
    form: Form,
}

#[derive(Clone)]
enum Form {
    Short(String),
    /// Boxed: a text is then as small as a `String`.
    Long(Box<Rope>),
}

impl Form {
    fn of(content: &str) -> Form {
        if content.len() <= SHORT_MAX {
            Form::Short(content.to_owned())
        } else {
            Form::Long(Box::new(Rope::new(content)))
        }
    }
}

impl Text {
    pub(crate) fn new(content: &str) -> Text {
        Text { form: Form::of(content) }
    }

    #[inline]
    pub(crate) fn len_chars(&self) -> usize {
        match &self.form {
            Form::Short(text) => str_indices::chars::count(text),
            Form::Long(rope) => rope.len_chars(),
        }
    }

    fn len_bytes(&self) -> usize {
        match &self.form {
            Form::Short(text) => text.len(),
            Form::Long(rope) => rope.len_bytes(),
        }
    }

    /// The text in pieces, in order.
    fn pieces(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match &self.form {
            Form::Short(text) => Box::new(std::iter::once(text.as_str())),
            Form::Long(rope) => Box::new(rope.chunks()),
        }
    }

    pub(crate) fn slice(&self, range: Range<usize>) -> String {
        match &self.form {
            Form::Short(text) => text[byte_range(text, range)].to_owned(),
            Form::Long(rope) => rope.slice(range),
        }
    }

    /// Removes `range` and inserts `insert` at its start. The caller checked the range.
    #[inline]
    pub(crate) fn splice(&mut self, range: Range<usize>, insert: &str) {
        match &mut self.form {
            Form::Short(text) => {
                text.replace_range(byte_range(text, range), insert);
                if text.len() > SHORT_MAX {
                    self.form = Form::of(text);
                }
            }
            Form::Long(rope) => {
                rope.splice(range, insert);
                if rope.len_bytes() < SHORT_AGAIN {
                    self.form = Form::Short(rope.to_string());
                }
            }
        }
    }

    pub(crate) fn set(&mut self, content: &str) {
        self.form = Form::of(content);
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.pieces().try_for_each(|piece| f.write_str(piece))
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        // Equal texts can differ in form and in where their chunks are cut: both follow
        // each text's edits.
        self.len_bytes() == other.len_bytes() && same_bytes(self.pieces(), other.pieces())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An edit, with its positions as fractions of the text's length so that they stay in
    /// range whatever the edits before did.
    #[derive(Debug, Clone)]
    enum Edit {
        Splice { at: f64, delete: f64, insert: String },
        Set(String),
    }

    /// Inserts long enough to cross [`SHORT_MAX`] in a few edits, with and without non-ASCII
    /// chars (two- to four-byte ones among them).
    fn insert() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => "[a-z ]{0,8}",
            1 => "[a-zé€😀]{0,8}",
            1 => "[a-z]{1,3}".prop_map(|s| s.repeat(300)),
            1 => "[a-z😀]{1,3}".prop_map(|s| s.repeat(200)),
        ]
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            12 => (0.0..=1.0f64, 0.0..=1.0f64, insert())
                .prop_map(|(at, delete, insert)| Edit::Splice { at, delete, insert }),
            // Mostly small deletes, sometimes most of the text: long texts must shrink too.
            2 => (0.0..=1.0f64, 0.9..=1.0f64)
                .prop_map(|(at, delete)| Edit::Splice { at, delete, insert: String::new() }),
            1 => insert().prop_map(Edit::Set),
        ]
    }

    /// Applies `edit` to the text and to a `Vec<char>` model of it.
    fn apply(text: &mut Text, model: &mut Vec<char>, edit: &Edit) {
        match edit {
            Edit::Splice { at, delete, insert } => {
                let start = (at * model.len() as f64) as usize;
                let count = (delete * delete * (model.len() - start) as f64) as usize;
                text.splice(start..start + count, insert);
                model.splice(start..start + count, insert.chars());
            }
            Edit::Set(content) => {
                text.set(content);
                *model = content.chars().collect();
            }
        }
    }

    fn form(text: &Text) -> &'static str {
        match text.form {
            Form::Short(_) => "short",
            Form::Long(_) => "long",
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever form a text is in, it holds, counts and slices exactly what a plain
        /// sequence of chars does after the same edits, and texts compare by content.
        #[test]
        fn every_form_holds_what_a_plain_string_does(
            edits in proptest::collection::vec(edit(), 1..40),
        ) {
            let mut text = Text::new("");
            let mut model: Vec<char> = Vec::new();
            for edit in &edits {
                apply(&mut text, &mut model, edit);
                let expected: String = model.iter().collect();
                prop_assert_eq!(text.to_string(), expected.clone(), "in form {}", form(&text));
                prop_assert_eq!(text.len_chars(), model.len());
                let third = model.len() / 3;
                let middle: String = model[third..2 * third].iter().collect();
                prop_assert_eq!(text.slice(third..2 * third), middle);
                // The same content made in one go may be in another form; it is equal.
                let fresh = Text::new(&expected);
                prop_assert!(text == fresh, "{} against {}", form(&text), form(&fresh));
                // One char changed, same form and byte length: unequal.
                if let Some(&last) = model.last() {
                    let changed = match last {
                        'a' => 'b',
                        c if c.is_ascii() => 'a',
                        c => char::from_u32(c as u32 ^ 1).expect("a char of the same width"),
                    };
                    let mut altered = text.clone();
                    altered.splice(model.len() - 1..model.len(), changed.encode_utf8(&mut [0; 4]));
                    prop_assert!(text != altered, "in form {}", form(&text));
                }
            }
        }
    }

    #[test]
    fn a_text_is_short_or_long_by_its_length_in_bytes() {
        let mut text = Text::new("hello");
        assert_eq!(form(&text), "short");
        text.splice(5..5, &"é".repeat(SHORT_MAX / 2));
        assert_eq!((form(&text), text.len_chars()), ("long", 5 + SHORT_MAX / 2));
        assert_eq!(text.slice(4..6), "oé");
        text.splice(0..SHORT_MAX / 2 - 1, "");
        assert_eq!(form(&text), "short");
        assert_eq!(text.to_string(), "é".repeat(6));
        text.set(&"a".repeat(SHORT_MAX + 1));
        assert_eq!((form(&text), text.len_chars()), ("long", SHORT_MAX + 1));
        text.set("");
        assert_eq!((form(&text), text.len_chars()), ("short", 0));
    }
}
