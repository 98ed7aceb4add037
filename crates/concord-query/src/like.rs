//! `LIKE` patterns: `%` matches any run of characters (also none), `_` exactly one character;
//! with `ESCAPE 'c'`, `c` makes the character after it literal. Matching is case-sensitive and
//! by Unicode code point.

/// A compiled `LIKE` pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LikePattern {
    text: String,
    escape: Option<char>,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Char(char),
    AnyOne,
    AnyRun,
}

impl LikePattern {
    /// Compiles `text`; an error message when the escape character ends the pattern.
    pub fn new(text: &str, escape: Option<char>) -> Result<LikePattern, String> {
        let mut tokens = Vec::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            let token = if Some(c) == escape {
                match chars.next() {
                    Some(escaped) => Token::Char(escaped),
                    None => {
                        return Err(format!(
                            "the LIKE pattern ends with its escape character {c:?}"
                        ));
                    }
                }
            } else {
                match c {
                    '%' => Token::AnyRun,
                    '_' => Token::AnyOne,
                    c => Token::Char(c),
                }
            };
            // `%%` matches what `%` does; keeping one bounds the backtracking.
            if !(token == Token::AnyRun && tokens.last() == Some(&Token::AnyRun)) {
                tokens.push(token);
            }
        }
        Ok(LikePattern { text: text.to_owned(), escape, tokens })
    }

    /// The pattern as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn escape(&self) -> Option<char> {
        self.escape
    }

    /// Whether `s` matches the whole pattern. Time O(len(s) × len(pattern)) at worst: on a
    /// mismatch only the last `%` is retried, one character further on.
    pub fn matches(&self, s: &str) -> bool {
        let tokens = &self.tokens;
        let (mut t, mut i) = (0, 0);
        // After a `%`: the token after it, and where in `s` that `%`'s run ends for now.
        let mut retry: Option<(usize, usize)> = None;
        loop {
            if let Some(token) = tokens.get(t) {
                let rest = &s[i..];
                match *token {
                    Token::AnyRun => {
                        t += 1;
                        retry = Some((t, i));
                        continue;
                    }
                    Token::AnyOne => {
                        if let Some(c) = rest.chars().next() {
                            t += 1;
                            i += c.len_utf8();
                            continue;
                        }
                    }
                    Token::Char(expected) => {
                        if rest.starts_with(expected) {
                            t += 1;
                            i += expected.len_utf8();
                            continue;
                        }
                    }
                }
            } else if i == s.len() {
                return true;
            }
            // Mismatch: let the last `%` swallow one more character, or fail.
            match retry {
                Some((after, run_end)) if run_end < s.len() => {
                    let next = run_end + s[run_end..].chars().next().map_or(1, char::len_utf8);
                    retry = Some((after, next));
                    t = after;
                    i = next;
                }
                _ => return false,
            }
        }
    }
}
