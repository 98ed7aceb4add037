//! The store behind string elements.
//!
//! A skip-list rope (jumprope): long texts take small edits in O(log n). It was chosen by
//! measurement — on the automerge-paper trace it replays about 3× faster than ropey (see
//! `docs/benchmarks.md`). Only this module knows which rope is used.

use std::fmt;
use std::ops::Range;

use jumprope::JumpRope;

/// A string element's content. Indices count `char`s.
#[derive(Clone)]
pub(crate) struct Text {
    rope: JumpRope,
}

impl Text {
    /// `seed` fixes the rope's internal layout, so the core stays free of hidden randomness;
    /// the layout never shows in the content.
    pub(crate) fn new(seed: u64, content: &str) -> Text {
        let mut rope = JumpRope::new_from_seed(seed);
        rope.insert(0, content);
        Text { rope }
    }

    pub(crate) fn len_chars(&self) -> usize {
        self.rope.len_chars()
    }

    pub(crate) fn slice(&self, range: Range<usize>) -> String {
        self.rope.slice_substrings(range).collect()
    }

    /// Removes `range` and inserts `insert` at its start, in one cursor walk. The caller
    /// checked the range.
    pub(crate) fn splice(&mut self, range: Range<usize>, insert: &str) {
        self.rope.replace(range, insert);
    }

    pub(crate) fn set(&mut self, content: &str) {
        let len = self.rope.len_chars();
        self.splice(0..len, content);
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.rope.substrings().try_for_each(|s| f.write_str(s))
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string(), f)
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Text) -> bool {
        self.rope == other.rope
    }
}
