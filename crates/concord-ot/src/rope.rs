//! The store of a long text: the text in chunks of at most [`CHUNK_MAX`] bytes, with each
//! chunk's length in chars in one array beside them.
//!
//! Finding a char reads that array, a few cache lines, then touches one chunk. A skip list or
//! a tree of pointers would miss the caches once per step instead, which is what a client
//! applying every operation to its own copy of a long body pays most. The search starts next
//! to where the last edit was, so an edit near the one before costs a few instructions:
//! typing is the common case.

use std::fmt;
use std::ops::Range;

/// The most bytes a chunk holds. A larger chunk means fewer chunks to step over and more
/// bytes moved per edit; an edit in a chunk moves half of it on average.
const CHUNK_MAX: usize = 1024;

/// A chunk shorter than this after an edit joins a neighbour that has room, so a text that
/// shrank is not left in many small chunks.
const CHUNK_MIN: usize = CHUNK_MAX / 4;

/// A text of any length, indexed by `char`. The caller checks ranges.
#[derive(Clone)]
pub(crate) struct Rope {
    /// Each chunk's length in chars, side by side: a search reads this, not the chunks.
    chars: Vec<u32>,
    /// The text in order, each chunk at most [`CHUNK_MAX`] bytes and none empty, except the
    /// only chunk of an empty rope.
    chunks: Vec<String>,
    len_chars: usize,
    len_bytes: usize,
    /// The chunk before the one the last edit began in (or the first chunk), and the char
    /// it starts at: the next search starts here.
    cursor: (usize, usize),
}

impl Rope {
    pub(crate) fn new(content: &str) -> Rope {
        let (chunks, chars) = cut(content);
        let (chunks, chars) =
            if chunks.is_empty() { (vec![String::new()], vec![0]) } else { (chunks, chars) };
        Rope {
            len_chars: chars.iter().map(|&c| c as usize).sum(),
            len_bytes: content.len(),
            chars,
            chunks,
            cursor: (0, 0),
        }
    }

    pub(crate) fn len_chars(&self) -> usize {
        self.len_chars
    }

    pub(crate) fn len_bytes(&self) -> usize {
        self.len_bytes
    }

    pub(crate) fn chunks(&self) -> impl Iterator<Item = &str> {
        self.chunks.iter().map(String::as_str)
    }

    pub(crate) fn slice(&self, range: Range<usize>) -> String {
        let (mut i, start) = self.locate(range.start);
        let mut offset = range.start - start;
        let mut left = range.len();
        let mut out = String::new();
        while left > 0 {
            let take = left.min(self.chars[i] as usize - offset);
            out.push_str(&self.chunks[i][self.bytes(i, offset, take)]);
            left -= take;
            offset = 0;
            i += 1;
        }
        out
    }

    /// Removes `range` and inserts `insert` at its start.
    pub(crate) fn splice(&mut self, range: Range<usize>, insert: &str) {
        let (i, start) = self.locate(range.start);
        let offset = range.start - start;
        if !range.is_empty() {
            self.delete(i, offset, range.len());
        }
        if !insert.is_empty() {
            self.insert(i, offset, insert);
        }
        // The edit and the mending change chunks from `i - 1` on, never where `i - 1`
        // starts: the next search starts there.
        self.cursor = match i.checked_sub(1) {
            Some(before) => (before, start - self.chars[before] as usize),
            None => (0, 0),
        };
        if i + 1 < self.chunks.len() {
            self.mend(i + 1);
        }
        self.mend(i);
    }

    /// The chunk holding char `pos` and the char it starts at; at the border of two chunks,
    /// either.
    fn locate(&self, pos: usize) -> (usize, usize) {
        const GROUP: usize = 8;
        let chars = &self.chars;
        let (mut i, mut start) = self.cursor;
        if pos < start {
            if pos < start / 2 {
                (i, start) = (0, 0);
            } else {
                while i >= GROUP && start - group_len(&chars[i - GROUP..i]) > pos {
                    start -= group_len(&chars[i - GROUP..i]);
                    i -= GROUP;
                }
                while pos < start {
                    i -= 1;
                    start -= chars[i] as usize;
                }
                return (i, start);
            }
        }
        while i + GROUP < chars.len() && start + group_len(&chars[i..i + GROUP]) < pos {
            start += group_len(&chars[i..i + GROUP]);
            i += GROUP;
        }
        while pos > start + chars[i] as usize && i + 1 < chars.len() {
            start += chars[i] as usize;
            i += 1;
        }
        (i, start)
    }

    /// The byte range of `count` chars from char `offset` of chunk `i`.
    fn bytes(&self, i: usize, offset: usize, count: usize) -> Range<usize> {
        let chunk = &self.chunks[i];
        if chunk.len() == self.chars[i] as usize {
            // One byte per char: the chunk is ASCII.
            return offset..offset + count;
        }
        byte_range(chunk, offset..offset + count)
    }

    /// Deletes `count` chars from char `offset` of chunk `i` on; may leave chunk `i` empty.
    fn delete(&mut self, i: usize, offset: usize, mut count: usize) {
        self.len_chars -= count;
        let here = count.min(self.chars[i] as usize - offset);
        self.cut_chars(i, offset, here);
        count -= here;
        let mut end = i + 1;
        while count > 0 && self.chars[end] as usize <= count {
            count -= self.chars[end] as usize;
            self.len_bytes -= self.chunks[end].len();
            end += 1;
        }
        self.chunks.drain(i + 1..end);
        self.chars.drain(i + 1..end);
        if count > 0 {
            self.cut_chars(i + 1, 0, count);
        }
    }

    fn cut_chars(&mut self, i: usize, offset: usize, count: usize) {
        if count > 0 {
            let bytes = self.bytes(i, offset, count);
            self.len_bytes -= bytes.len();
            self.chunks[i].replace_range(bytes, "");
            self.chars[i] -= count as u32;
        }
    }

    fn insert(&mut self, i: usize, offset: usize, insert: &str) {
        let at = self.bytes(i, 0, offset).end;
        self.len_bytes += insert.len();
        if self.chunks[i].len() + insert.len() <= CHUNK_MAX {
            let count = str_indices::chars::count(insert);
            self.chunks[i].insert_str(at, insert);
            self.chars[i] += count as u32;
            self.len_chars += count;
            return;
        }
        // The chunk overflows: it and the insert become as many even chunks as they need,
        // each at least half full, so typing into a full chunk does not leave a trail of
        // small ones.
        let old = &self.chunks[i];
        let whole = [&old[..at], insert, &old[at..]].concat();
        let (pieces, counts) = cut(&whole);
        self.len_chars +=
            counts.iter().map(|&c| c as usize).sum::<usize>() - self.chars[i] as usize;
        self.chunks.splice(i..=i, pieces);
        self.chars.splice(i..=i, counts);
    }

    /// Removes chunk `i` if an edit emptied it, or joins it to a neighbour that has room if
    /// it is small.
    fn mend(&mut self, i: usize) {
        let len = self.chunks[i].len();
        if len >= CHUNK_MIN || self.chunks.len() == 1 {
            return;
        }
        if len == 0 {
            self.chunks.remove(i);
            self.chars.remove(i);
        } else if i + 1 < self.chunks.len() && len + self.chunks[i + 1].len() <= CHUNK_MAX {
            let next = self.chunks.remove(i + 1);
            self.chunks[i].push_str(&next);
            self.chars[i] += self.chars.remove(i + 1);
        } else if i > 0 && len + self.chunks[i - 1].len() <= CHUNK_MAX {
            let this = self.chunks.remove(i);
            self.chunks[i - 1].push_str(&this);
            self.chars[i - 1] += self.chars.remove(i);
        }
    }
}

/// The byte range of the chars `chars` of `text`.
pub(crate) fn byte_range(text: &str, chars: Range<usize>) -> Range<usize> {
    let start = str_indices::chars::to_byte_idx(text, chars.start);
    start..start + str_indices::chars::to_byte_idx(&text[start..], chars.len())
}

fn group_len(chars: &[u32]) -> usize {
    chars.iter().map(|&c| c as usize).sum()
}

/// `text` in as few chunks of at most [`CHUNK_MAX`] bytes as it needs, of about even
/// length, cut between chars; and each chunk's length in chars.
fn cut(text: &str) -> (Vec<String>, Vec<u32>) {
    let pieces = text.len().div_ceil(CHUNK_MAX);
    let mut chunks = Vec::with_capacity(pieces);
    let mut chars = Vec::with_capacity(pieces);
    let mut rest = text;
    while !rest.is_empty() {
        let target = rest.len().div_ceil(rest.len().div_ceil(CHUNK_MAX));
        let mut end = target;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            end = target;
            while !rest.is_char_boundary(end) {
                end += 1;
            }
        }
        let (chunk, after) = rest.split_at(end);
        chars.push(str_indices::chars::count(chunk) as u32);
        chunks.push(chunk.to_owned());
        rest = after;
    }
    (chunks, chars)
}

impl fmt::Display for Rope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.chunks().try_for_each(|chunk| f.write_str(chunk))
    }
}

/// Whether two sequences of pieces hold the same bytes, however each is cut.
pub(crate) fn same_bytes<'a>(
    mut a: impl Iterator<Item = &'a str>,
    mut b: impl Iterator<Item = &'a str>,
) -> bool {
    let (mut x, mut y) = (&b""[..], &b""[..]);
    loop {
        if x.is_empty() {
            match a.next() {
                Some(piece) => x = piece.as_bytes(),
                None => return y.is_empty() && b.all(str::is_empty),
            }
            continue;
        }
        if y.is_empty() {
            match b.next() {
                Some(piece) => y = piece.as_bytes(),
                None => return false,
            }
            continue;
        }
        let n = x.len().min(y.len());
        if x[..n] != y[..n] {
            return false;
        }
        (x, y) = (&x[n..], &y[n..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl Rope {
        /// Panics unless every chunk and count agrees with the text, and the cursor with the
        /// chunks before it.
        fn check(&self) {
            assert_eq!(self.chunks.len(), self.chars.len());
            for (chunk, &chars) in self.chunks.iter().zip(&self.chars) {
                assert!(chunk.len() <= CHUNK_MAX, "a chunk of {} bytes", chunk.len());
                assert!(!chunk.is_empty() || self.chunks.len() == 1, "an empty chunk");
                assert_eq!(chunk.chars().count(), chars as usize);
            }
            assert_eq!(self.len_chars, group_len(&self.chars));
            assert_eq!(self.len_bytes, self.chunks.iter().map(String::len).sum::<usize>());
            let (cursor, start) = self.cursor;
            assert_eq!(start, group_len(&self.chars[..cursor]));
        }
    }

    /// A splice near the last one (as typing and its corrections are) or anywhere, on a
    /// text of `len` chars: `(start, deleted, inserted)`.
    fn splice() -> impl Strategy<Value = (bool, f64, u16, String)> {
        let insert = prop_oneof![
            6 => "[a-z ]{0,3}",
            2 => "[a-zé€😀]{0,4}",
            1 => "[a-z😀]{1,3}".prop_map(|s| s.repeat(400)),
        ];
        let delete = prop_oneof![6 => 0..4u16, 2 => 0..2000u16, 1 => 0..20_000u16];
        (any::<bool>(), 0.0..=1.0f64, delete, insert)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Through runs of nearby and scattered splices on texts of up to tens of KiB (tens
        /// of chunks, so searches step over groups of chunks both ways, chunks overflow,
        /// empty and join), the rope holds and slices what a plain sequence of chars does.
        #[test]
        fn a_rope_holds_what_a_plain_string_does(
            start in "[a-zé😀 ]{0,40}".prop_map(|s| s.repeat(500)),
            splices in proptest::collection::vec(splice(), 1..120),
        ) {
            let mut rope = Rope::new(&start);
            let mut model: Vec<char> = start.chars().collect();
            let mut last = 0;
            for (near, at, delete, insert) in splices {
                let at = if near {
                    (last + (at * 16.0) as usize).saturating_sub(8).min(model.len())
                } else {
                    (at * model.len() as f64) as usize
                };
                let end = (at + delete as usize).min(model.len());
                rope.splice(at..end, &insert);
                model.splice(at..end, insert.chars());
                last = at;
                rope.check();
                prop_assert_eq!(rope.len_chars(), model.len());
                let third = model.len() / 3;
                let middle: String = model[third..model.len() - third].iter().collect();
                prop_assert_eq!(rope.slice(third..model.len() - third), middle);
            }
            let expected: String = model.iter().collect();
            prop_assert_eq!(rope.to_string(), expected);
        }
    }

    #[test]
    fn pieces_compare_by_their_bytes_however_they_are_cut() {
        let same = |a: &[&str], b: &[&str]| same_bytes(a.iter().copied(), b.iter().copied());
        assert!(same(&["abc", "def"], &["a", "bcde", "", "f"]));
        assert!(same(&[], &["", ""]));
        assert!(!same(&["abc"], &["ab"]));
        assert!(!same(&["ab"], &["abc"]));
        assert!(!same(&["abc", "def"], &["abc", "dfe"]));
    }
}
