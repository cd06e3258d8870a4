//! What a span may say about a query: its text with every literal replaced by `?` (values never
//! leave the process), and the low-cardinality summary the span is named after
//! (`SELECT documents`). Runs only for queries whose span is kept.

use std::hash::Hasher;
use std::ops::Range;

/// Longest `db.query.text` exported; longer texts are cut at a character boundary.
const MAX_TEXT: usize = 2048;
/// Tables named in a summary.
const MAX_COLLECTIONS: usize = 3;

/// A query as a span describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryShape {
    /// The text with literals replaced by `?`, comments removed and whitespace collapsed.
    pub text: String,
    /// The statement's first keyword, upper-cased (`SELECT`), if any.
    pub operation: Option<String>,
    /// Tables it names, in order of appearance, at most three.
    pub collections: Vec<String>,
    /// Whether the text had literals (replaced by `?`): such a text is usually one execution's
    /// own, not worth remembering.
    pub has_literals: bool,
}

impl QueryShape {
    /// `{operation} {collection...}`, e.g. `SELECT documents chunks`.
    #[must_use]
    pub fn summary(&self) -> Option<String> {
        let operation = self.operation.as_deref()?;
        let mut summary = operation.to_owned();
        for collection in &self.collections {
            summary.push(' ');
            summary.push_str(collection);
        }
        Some(summary)
    }

    /// The one table the query names, when there is exactly one.
    #[must_use]
    pub fn collection(&self) -> Option<&str> {
        match self.collections.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a str),
    QuotedName(&'a str),
    Literal,
    Number,
    Param(&'a str),
    Symbol(&'a str),
}

/// Splits SQL into tokens, noting for each whether whitespace or a comment preceded it.
struct Tokens<'a> {
    sql: &'a str,
    at: usize,
}

/// Which bytes continue a word, by byte: the lexer's innermost loop looks each one up.
const WORD_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b: u8 = 0;
    loop {
        table[b as usize] = b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
        if b == u8::MAX {
            break table;
        }
        b += 1;
    }
};

fn is_word_byte(b: u8) -> bool {
    WORD_BYTES[usize::from(b)]
}

impl<'a> Tokens<'a> {
    fn bytes(&self) -> &'a [u8] {
        self.sql.as_bytes()
    }

    fn peek_at(&self, i: usize) -> Option<u8> {
        self.bytes().get(i).copied()
    }

    /// Skips whitespace and comments; true if anything was skipped.
    fn skip_blank(&mut self) -> bool {
        let start = self.at;
        loop {
            match (self.peek_at(self.at), self.peek_at(self.at + 1)) {
                (Some(b), _) if b.is_ascii_whitespace() => self.at += 1,
                (Some(b'-'), Some(b'-')) => {
                    while self.peek_at(self.at).is_some_and(|b| b != b'\n') {
                        self.at += 1;
                    }
                }
                (Some(b'/'), Some(b'*')) => {
                    let mut depth = 0usize;
                    while self.at < self.sql.len() {
                        match (self.peek_at(self.at), self.peek_at(self.at + 1)) {
                            (Some(b'/'), Some(b'*')) => {
                                depth += 1;
                                self.at += 2;
                            }
                            (Some(b'*'), Some(b'/')) => {
                                depth -= 1;
                                self.at += 2;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => self.at += 1,
                        }
                    }
                }
                _ => return self.at > start,
            }
        }
    }

    fn quoted(&mut self, quote: u8) -> &'a str {
        let start = self.at;
        self.at += 1;
        while let Some(b) = self.peek_at(self.at) {
            self.at += 1;
            if b == quote {
                if self.peek_at(self.at) == Some(quote) {
                    self.at += 1;
                } else {
                    break;
                }
            } else if b == b'\\' && quote == b'\'' {
                // Harmless for standard strings, needed for E'...' escapes.
                self.at += 1;
            }
        }
        self.sql
            .get(start..self.at.min(self.sql.len()))
            .unwrap_or("")
    }

    /// A `$tag$` opening at the cursor, if there is one.
    fn dollar_tag(&self) -> Option<&'a str> {
        let rest = &self.bytes()[self.at..];
        let end = rest[1..].iter().position(|&b| b == b'$')? + 1;
        let tag = &rest[1..end];
        (tag.is_empty()
            || (!tag[0].is_ascii_digit() && tag.iter().all(|&b| is_word_byte(b) && b != b'$')))
        .then(|| &self.sql[self.at..=self.at + end])
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = (bool, Token<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        self.next_token().map(|(spaced, _, token)| (spaced, token))
    }
}

impl<'a> Tokens<'a> {
    /// The next token, whether blanks preceded it, and where it starts.
    fn next_token(&mut self) -> Option<(bool, usize, Token<'a>)> {
        let spaced = self.skip_blank();
        let b = self.peek_at(self.at)?;
        let start = self.at;
        let token = match b {
            b'\'' => {
                self.quoted(b'\'');
                Token::Literal
            }
            b'"' => Token::QuotedName(self.quoted(b'"')),
            b'$' if self
                .peek_at(self.at + 1)
                .is_some_and(|d| d.is_ascii_digit()) =>
            {
                self.at += 1;
                while self.peek_at(self.at).is_some_and(|d| d.is_ascii_digit()) {
                    self.at += 1;
                }
                Token::Param(&self.sql[start..self.at])
            }
            b'$' if self.dollar_tag().is_some() => {
                let tag = self.dollar_tag().unwrap_or("$$");
                let body = self.at + tag.len();
                self.at = self.sql[body..]
                    .find(tag)
                    .map_or(self.sql.len(), |i| body + i + tag.len());
                Token::Literal
            }
            b'0'..=b'9' => {
                while self
                    .peek_at(self.at)
                    .is_some_and(|d| d.is_ascii_alphanumeric() || d == b'.' || d == b'_')
                {
                    let exponent = matches!(self.peek_at(self.at), Some(b'e' | b'E'));
                    self.at += 1;
                    if exponent && matches!(self.peek_at(self.at), Some(b'+' | b'-')) {
                        self.at += 1;
                    }
                }
                Token::Number
            }
            b'.' if self
                .peek_at(self.at + 1)
                .is_some_and(|d| d.is_ascii_digit()) =>
            {
                self.at += 1;
                while self.peek_at(self.at).is_some_and(|d| d.is_ascii_digit()) {
                    self.at += 1;
                }
                Token::Number
            }
            b if is_word_byte(b) => {
                while self.peek_at(self.at).is_some_and(is_word_byte) {
                    self.at += 1;
                }
                // E'..', B'..', X'..', U&'..' are one literal with their prefix.
                let word = &self.sql[start..self.at];
                let prefixed = matches!(word, "e" | "E" | "b" | "B" | "x" | "X" | "n" | "N");
                if prefixed && self.peek_at(self.at) == Some(b'\'') {
                    self.quoted(b'\'');
                    Token::Literal
                } else if matches!(word, "u" | "U") && self.bytes()[self.at..].starts_with(b"&'") {
                    self.at += 1;
                    self.quoted(b'\'');
                    Token::Literal
                } else {
                    Token::Word(word)
                }
            }
            _ => {
                // One character, whatever its width.
                let width = self.sql[start..].chars().next().map_or(1, char::len_utf8);
                self.at += width;
                Token::Symbol(&self.sql[start..self.at])
            }
        };
        Some((spaced, start, token))
    }
}

/// Keywords after which a table name follows.
fn introduces_table(word: &str) -> bool {
    ["from", "join", "into", "update", "table"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

/// Words that may follow a table-introducing keyword without being the table.
fn is_modifier(word: &str) -> bool {
    ["only", "lateral", "if", "not", "exists"]
        .iter()
        .any(|k| word.eq_ignore_ascii_case(k))
}

/// Feeds `hasher` the text of `sql` with each literal cut out, and says whether there was one:
/// what the statement cache looks a literal-laden text up by. Texts that differ only in their
/// literals share it, and so share their sanitized text. The text between literals goes to the
/// hasher as it is, in long runs, and no sanitized text is built. Where the literals were is
/// appended to `literals`, for [`has_layout_of`].
pub fn fingerprint(sql: &str, hasher: &mut impl Hasher, literals: &mut Vec<Range<usize>>) -> bool {
    let bytes = sql.as_bytes();
    let mut tokens = Tokens { sql, at: 0 };
    let mut run_start = 0;
    let mut has_literals = false;
    while let Some((_, start, token)) = tokens.next_token() {
        if matches!(token, Token::Literal | Token::Number) {
            hasher.write(&bytes[run_start..start]);
            // Where the literal was: a NUL byte, which no query text contains.
            hasher.write_u8(0);
            run_start = tokens.at.min(bytes.len());
            literals.push(start..run_start);
            has_literals = true;
        }
    }
    hasher.write(&bytes[run_start..]);
    has_literals
}

/// Whether `sql` is `old` with other literals in the same places, checked without lexing the
/// text between them: every run between `old`'s literals (`literals`, from [`fingerprint`]) is
/// there byte for byte, and between two runs stands exactly one literal, which the lexer reads
/// from its first byte to where the next run begins. Each literal must start with the byte
/// `old`'s started with (any digit for a digit), so the token before it ends where it ended in
/// `old`. The lexer reads forward from a position and nothing else, so such a text lexes into
/// `old`'s tokens but for the literals' contents: it has `old`'s fingerprint and facts.
#[must_use]
pub fn has_layout_of(sql: &str, old: &[u8], literals: &[Range<usize>]) -> bool {
    let new = sql.as_bytes();
    let mut new_at = 0;
    let mut old_at = 0;
    for literal in literals {
        let Some(run) = old.get(old_at..literal.start) else {
            return false;
        };
        if !new[new_at..].starts_with(run) {
            return false;
        }
        new_at += run.len();
        let same_first_byte = match (new.get(new_at), old.get(literal.start)) {
            (Some(&now), Some(&then)) => {
                now == then || (now.is_ascii_digit() && then.is_ascii_digit())
            }
            _ => false,
        };
        if !same_first_byte {
            return false;
        }
        let mut tokens = Tokens { sql, at: new_at };
        match tokens.next_token() {
            Some((_, start, Token::Literal | Token::Number)) if start == new_at => {
                new_at = tokens.at.min(new.len());
            }
            _ => return false,
        }
        old_at = literal.end;
    }
    old.get(old_at..) == Some(&new[new_at..])
}

/// Appends `token` to a sanitized text (a literal as `?`); true when it was a literal.
fn append_sanitised(text: &mut String, spaced: bool, token: Token<'_>) -> bool {
    if spaced && !text.is_empty() && text.len() < MAX_TEXT {
        text.push(' ');
    }
    let (piece, literal) = match token {
        Token::Literal | Token::Number => ("?", true),
        Token::Word(w) | Token::QuotedName(w) | Token::Param(w) | Token::Symbol(w) => (w, false),
    };
    push_bounded(text, piece);
    literal
}

/// Describes `sql` for a span: sanitized text, operation and tables.
#[must_use]
pub fn shape(sql: &str) -> QueryShape {
    let mut shape = QueryShape {
        text: String::with_capacity(sql.len().min(MAX_TEXT)),
        ..QueryShape::default()
    };
    let mut want_table = false;
    let mut name = String::new();
    let mut tokens = Tokens { sql, at: 0 }.peekable();
    while let Some((spaced, token)) = tokens.next() {
        shape.has_literals |= append_sanitised(&mut shape.text, spaced, token);
        match token {
            Token::Word(w) if shape.operation.is_none() => {
                shape.operation = Some(w.to_ascii_uppercase());
                want_table = w.eq_ignore_ascii_case("update") || w.eq_ignore_ascii_case("copy");
            }
            Token::Word(w) if want_table && is_modifier(w) => {}
            Token::Word(w) | Token::QuotedName(w) if want_table => {
                name.push_str(w);
                // A qualified name continues after a dot.
                if matches!(tokens.peek(), Some((false, Token::Symbol(".")))) {
                    if let Some((_, Token::Symbol(dot))) = tokens.next() {
                        push_bounded(&mut shape.text, dot);
                        name.push_str(dot);
                    }
                    continue;
                }
                want_table = false;
                let table = std::mem::take(&mut name);
                if shape.collections.len() < MAX_COLLECTIONS && !shape.collections.contains(&table)
                {
                    shape.collections.push(table);
                }
            }
            Token::Word(w) => want_table = introduces_table(w),
            _ => {
                want_table = false;
                name.clear();
            }
        }
    }
    shape
}

fn push_bounded(text: &mut String, piece: &str) {
    let room = MAX_TEXT.saturating_sub(text.len());
    if piece.len() <= room {
        text.push_str(piece);
    } else {
        let mut cut = room;
        while !piece.is_char_boundary(cut) {
            cut -= 1;
        }
        text.push_str(&piece[..cut]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_that_differ_only_in_their_literals_share_a_fingerprint() {
        let of = |sql: &str| {
            let mut hasher = std::hash::DefaultHasher::new();
            let literals = fingerprint(sql, &mut hasher, &mut Vec::new());
            (hasher.finish(), literals)
        };
        let same = [
            "SELECT * FROM users WHERE email = 'a@b.c' AND id IN (1, 2.5e-3, .5)",
            "SELECT * FROM users WHERE email = E'x''s' AND id IN (7, 8, $$y$$)",
            "SELECT * FROM users WHERE email = '' AND id IN (7e3, X'ff', .9)",
        ];
        assert!(same.iter().all(|sql| of(sql) == of(same[0])), "{same:?}");
        assert!(of(same[0]).1, "literals found");
        for different in [
            "SELECT * FROM users WHERE email = 'a@b.c' AND id IN (1, 2.5e-3)",
            "SELECT * FROM users2 WHERE email = 'a@b.c' AND id IN (1, 2.5e-3, .5)",
            "SELECT * FROM users WHERE email = $1 AND id IN (1, 2.5e-3, .5)",
            "SELECT * FROM users WHERE email='a@b.c' AND id IN (1, 2.5e-3, .5)",
        ] {
            assert_ne!(of(different), of(same[0]), "{different}");
        }
        assert!(of("SELECT 1").1);
        assert!(!of("SELECT $1").1, "a parameter is no literal");
    }

    #[test]
    fn literals_never_survive() {
        let s = shape(
            "SELECT * FROM users WHERE email = 'a@b.c' AND id IN (1, 2.5e-3, .5) \
             AND note = E'it\\'s' AND body = $q$secret$q$ AND x = $1 -- tail 'x'\n",
        );
        assert_eq!(
            s.text,
            "SELECT * FROM users WHERE email = ? AND id IN (?, ?, ?) AND note = ? AND body = ? AND x = $1"
        );
        assert_eq!(s.summary().as_deref(), Some("SELECT users"));
        assert_eq!(s.collection(), Some("users"));
    }

    #[test]
    fn tables_of_joins_inserts_and_updates() {
        let s = shape("select d.id from public.documents d join chunks c on c.document_id = d.id");
        assert_eq!(
            s.summary().as_deref(),
            Some("SELECT public.documents chunks")
        );
        assert_eq!(s.collection(), None);
        assert_eq!(
            shape("INSERT INTO \"Docs\" (a) VALUES ('x')")
                .summary()
                .as_deref(),
            Some("INSERT \"Docs\"")
        );
        assert_eq!(
            shape("update only t set a = 1").summary().as_deref(),
            Some("UPDATE t")
        );
        assert_eq!(shape("BEGIN").summary().as_deref(), Some("BEGIN"));
        assert_eq!(shape("  ").summary(), None);
    }

    #[test]
    fn comments_are_dropped_and_text_is_bounded() {
        let s = shape("/*traceparent='00-aa-bb-01'*/ SELECT 1 /* x */");
        assert_eq!(s.text, "SELECT ?");
        let long = format!("SELECT {}", "a, ".repeat(2000));
        assert!(shape(&long).text.len() <= MAX_TEXT);
        let s = shape("SELECT 'ünïcode', \"naïve\" FROM t");
        assert_eq!(s.text, "SELECT ?, \"naïve\" FROM t");
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for sql in [
            "SELECT 'abc",
            "SELECT $$abc",
            "SELECT \"abc",
            "/* open",
            "SELECT $",
            "x$",
            "SELECT E'abc\\",
        ] {
            let _ = shape(sql);
            assert!(
                fingerprint(sql, &mut std::hash::DefaultHasher::new(), &mut Vec::new())
                    || !sql.contains('\''),
                "{sql}"
            );
        }
    }

    /// The literal spans of `sql` and its fingerprint.
    fn layout(sql: &str) -> (Vec<Range<usize>>, u64) {
        let mut hasher = std::hash::DefaultHasher::new();
        let mut literals = Vec::new();
        fingerprint(sql, &mut hasher, &mut literals);
        (literals, hasher.finish())
    }

    #[test]
    fn a_text_has_the_layout_of_another_when_only_its_literals_differ() {
        let old = "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;";
        let (literals, _) = layout(old);
        for same in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1e5;",
            old,
        ] {
            assert!(has_layout_of(same, old.as_bytes(), &literals), "{same}");
        }
        for other in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = '7';",
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7 ;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7; SELECT 1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 7",
            "SELECT balance FROM pgbench_accounts WHERE aid = 7;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = ",
        ] {
            assert!(!has_layout_of(other, old.as_bytes(), &literals), "{other}");
        }
        let quoted = "UPDATE t SET a = 'x', b = E'y' WHERE c = $$z$$";
        let (literals, _) = layout(quoted);
        assert!(has_layout_of(
            "UPDATE t SET a = 'it''s', b = E'\\n' WHERE c = $$$$",
            quoted.as_bytes(),
            &literals
        ));
        assert!(
            !has_layout_of(
                "UPDATE t SET a = 'x', b = Ey WHERE c = $$z$$",
                quoted.as_bytes(),
                &literals
            ),
            "a prefix letter that is no longer a literal's"
        );
    }

    proptest::proptest! {
        /// The rule that lets the statement cache skip the lexer: a text with the layout of
        /// another has its fingerprint and its shape. The two texts are built from the same
        /// pieces with different fillings, some of them not literals at all or literals that
        /// run on into what follows.
        #[test]
        fn a_text_with_the_layout_of_another_has_its_fingerprint_and_shape(
            pieces in proptest::collection::vec(
                (
                    "( |x|ab|SELECT|=|,|\\(|\\)|\\.|-|e|E|u|\\$1|\\$|'|--|/\\*|\\*/|\n|_|&){0,4}",
                    "(1|23|4\\.5|1e5|1e|\\.5|'x'|'|E'y'|x'ff'|\\$\\$z\\$\\$|\\$a\\$q\\$a\\$|5abc|0x1|N'n'|ab)",
                    "(1|23|4\\.5|1e5|1e|\\.5|'x'|'|E'y'|x'ff'|\\$\\$z\\$\\$|\\$a\\$q\\$a\\$|5abc|0x1|N'n'|ab)",
                ),
                1..5,
            ),
            tail in "( |x|;|'|\\$\\$|1|\\.|e){0,3}",
        ) {
            let join = |fill: fn(&(String, String, String)) -> [&str; 2]| {
                pieces.iter().flat_map(fill).collect::<String>() + &tail
            };
            let old = join(|(run, a, _)| [run, a]);
            let new = join(|(run, _, b)| [run, b]);
            let (literals, old_fingerprint) = layout(&old);
            if has_layout_of(&new, old.as_bytes(), &literals) {
                proptest::prop_assert_eq!(layout(&new).1, old_fingerprint, "{} / {}", old, new);
                proptest::prop_assert_eq!(shape(&new), shape(&old), "{} / {}", old, new);
            }
        }
    }
}
