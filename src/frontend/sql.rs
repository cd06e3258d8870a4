//! Just enough SQL lexing to see what a client's statements do to its session: settings it
//! changes, statements it deallocates, and state that cannot be shared across server connections.
//! Quotes, dollar quotes and comments are honoured so that text inside them never counts.

/// Something a statement does that transaction pooling must account for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A session-level `SET name ...` (not `SET LOCAL`).
    Set(String),
    /// `RESET name`.
    Reset(String),
    /// `RESET ALL`.
    ResetAll,
    /// `DEALLOCATE name`, or `DEALLOCATE ALL` when `None`.
    Deallocate(Option<String>),
    /// `DISCARD ALL`.
    DiscardAll,
    /// State that lives in the server session: the client must keep its connection.
    Pin(&'static str),
    /// The proxy answered `DISCARD ALL` itself: the client's settings go back to its startup
    /// values, while the shared server connection was not touched.
    ClientReset,
}

/// The effects of a query string and how many statements it holds.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Classified {
    /// Non-empty statements in the string.
    pub statements: usize,
    /// Effects, in order.
    pub effects: Vec<Effect>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A keyword or unquoted identifier, lowercased.
    Word(String),
    /// A quoted identifier, as written.
    Quoted(String),
    /// A string literal's contents.
    Literal(String),
    /// Any other character.
    Punct(char),
    /// End of a statement.
    Semicolon,
}

fn lex(sql: &str) -> Vec<Token> {
    let chars: Vec<char> = sql.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '-' if chars.get(i + 1) == Some(&'-') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                let mut depth = 0;
                while i < chars.len() {
                    if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                        depth += 1;
                        i += 2;
                    } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            '\'' | '"' => {
                let mut text = String::new();
                i += 1;
                while i < chars.len() {
                    if chars[i] == c {
                        if chars.get(i + 1) == Some(&c) {
                            text.push(c);
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    text.push(chars[i]);
                    i += 1;
                }
                i += 1;
                tokens.push(if c == '"' {
                    Token::Quoted(text)
                } else {
                    Token::Literal(text)
                });
            }
            '$' if dollar_tag(&chars, i).is_some() => {
                let tag = dollar_tag(&chars, i).unwrap_or_default();
                i += tag.len();
                let mut text = String::new();
                while i < chars.len() && !chars[i..].starts_with(&tag) {
                    text.push(chars[i]);
                    i += 1;
                }
                i += tag.len();
                tokens.push(Token::Literal(text));
            }
            ';' => {
                tokens.push(Token::Semicolon);
                i += 1;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
                {
                    i += 1;
                }
                tokens.push(Token::Word(
                    chars[start..i].iter().collect::<String>().to_lowercase(),
                ));
            }
            c => {
                tokens.push(Token::Punct(c));
                i += 1;
            }
        }
    }
    tokens
}

/// The `$tag$` opening a dollar-quoted string at `i`, if one starts there.
fn dollar_tag(chars: &[char], i: usize) -> Option<Vec<char>> {
    let mut end = i + 1;
    while end < chars.len() && (chars[end].is_alphanumeric() || chars[end] == '_') {
        end += 1;
    }
    if chars.get(end) == Some(&'$') && !chars.get(i + 1).is_some_and(char::is_ascii_digit) {
        Some(chars[i..=end].to_vec())
    } else {
        None
    }
}

fn word(token: Option<&Token>) -> Option<&str> {
    match token {
        Some(Token::Word(w)) => Some(w),
        _ => None,
    }
}

/// A setting name at the front of `tokens`: `name`, `"Name"` or `ext.name`.
fn setting_name(tokens: &[Token]) -> Option<String> {
    let mut name = match tokens.first()? {
        Token::Word(w) => w.clone(),
        Token::Quoted(q) => q.clone(),
        _ => return None,
    };
    if tokens.get(1) == Some(&Token::Punct('.')) {
        if let Some(Token::Word(w) | Token::Quoted(w)) = tokens.get(2) {
            name = format!("{name}.{w}");
        }
    }
    Some(name)
}

fn special_setting(tokens: &[Token]) -> Option<(&'static str, usize)> {
    match (word(tokens.first()), word(tokens.get(1))) {
        (Some("time"), Some("zone")) => Some(("TimeZone", 2)),
        (Some("names"), _) => Some(("client_encoding", 1)),
        (Some("session"), Some("authorization")) => Some(("session_authorization", 2)),
        (Some("role"), _) => Some(("role", 1)),
        _ => None,
    }
}

fn classify_statement(tokens: &[Token], effects: &mut Vec<Effect>) {
    const SESSION_LOCKS: &[&str] = &[
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
    ];
    let words: Vec<&str> = tokens.iter().filter_map(|t| word(Some(t))).collect();
    if words.iter().any(|w| SESSION_LOCKS.contains(w)) {
        effects.push(Effect::Pin("session advisory lock"));
    }
    if words.contains(&"set_config") {
        effects.push(Effect::Pin("set_config()"));
    }
    match words.first().copied() {
        Some("set") => {
            let mut rest = &tokens[1..];
            match word(rest.first()) {
                Some("local" | "transaction" | "constraints") => return,
                Some("session") if word(rest.get(1)) != Some("authorization") => rest = &rest[1..],
                _ => {}
            }
            if let Some((name, _)) = special_setting(rest) {
                effects.push(Effect::Set(name.to_owned()));
            } else if let Some(name) = setting_name(rest) {
                effects.push(Effect::Set(name));
            }
        }
        Some("reset") => {
            let rest = &tokens[1..];
            if word(rest.first()) == Some("all") {
                effects.push(Effect::ResetAll);
            } else if let Some((name, _)) = special_setting(rest) {
                effects.push(Effect::Reset(name.to_owned()));
            } else if let Some(name) = setting_name(rest) {
                effects.push(Effect::Reset(name));
            }
        }
        Some("deallocate") => {
            let mut rest = &tokens[1..];
            if word(rest.first()) == Some("prepare") {
                rest = &rest[1..];
            }
            match rest.first() {
                Some(Token::Word(w)) if w == "all" => effects.push(Effect::Deallocate(None)),
                Some(Token::Word(w) | Token::Quoted(w)) => {
                    effects.push(Effect::Deallocate(Some(w.clone())));
                }
                _ => {}
            }
        }
        Some("discard") if words.get(1) == Some(&"all") => effects.push(Effect::DiscardAll),
        Some("listen") => effects.push(Effect::Pin("LISTEN")),
        Some("prepare") => effects.push(Effect::Pin("SQL PREPARE")),
        Some("create")
            if words[1..]
                .iter()
                .take(2)
                .any(|w| matches!(*w, "temp" | "temporary")) =>
        {
            effects.push(Effect::Pin("temporary table"));
        }
        Some("declare") if words.windows(2).any(|w| w == ["with", "hold"]) => {
            effects.push(Effect::Pin("WITH HOLD cursor"));
        }
        _ => {}
    }
}

/// What the statements of `sql` do to the session.
#[must_use]
pub fn classify(sql: &str) -> Classified {
    let tokens = lex(sql);
    let mut classified = Classified::default();
    for statement in tokens.split(|t| *t == Token::Semicolon) {
        if statement.is_empty() {
            continue;
        }
        classified.statements += 1;
        classify_statement(statement, &mut classified.effects);
    }
    classified
}

/// A LISTEN or UNLISTEN statement, which transaction mode serves through the sidecar's own
/// listening connection instead of pinning the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscription {
    /// `LISTEN channel`.
    Listen(String),
    /// `UNLISTEN channel`.
    Unlisten(String),
    /// `UNLISTEN *`.
    UnlistenAll,
}

impl Subscription {
    /// The command tag PostgreSQL answers it with.
    #[must_use]
    pub fn tag(&self) -> &'static str {
        match self {
            Self::Listen(_) => "LISTEN",
            Self::Unlisten(_) | Self::UnlistenAll => "UNLISTEN",
        }
    }
}

/// Whether `sql` starts with one of `words` (case-insensitively, after white space): a screen
/// that keeps ordinary queries from being lexed on the hot path. Text after a leading comment
/// is not seen, so such a statement takes the general path.
fn starts_with_word(sql: &str, words: &[&str]) -> bool {
    starts_with_word_bytes(sql.as_bytes(), words)
}

/// [`starts_with_word`] on text not yet checked to be UTF-8 (a message body).
fn starts_with_word_bytes(sql: &[u8], words: &[&str]) -> bool {
    let start = sql.trim_ascii_start();
    words
        .iter()
        .any(|w| start.len() >= w.len() && start[..w.len()].eq_ignore_ascii_case(w.as_bytes()))
}

/// Whether a statement's raw text may be a LISTEN or UNLISTEN: the screen that keeps every
/// other query from being decoded and lexed for [`subscriptions`].
#[must_use]
pub fn may_subscribe(sql: &[u8]) -> bool {
    starts_with_word_bytes(sql, SUBSCRIPTION_VERBS)
}

/// The verbs of [`subscriptions`].
const SUBSCRIPTION_VERBS: &[&str] = &["listen", "unlisten"];

/// The statements of `sql` as subscriptions, when it holds nothing but LISTEN and UNLISTEN;
/// `None` otherwise (anything else in the string keeps the client's usual handling).
#[must_use]
pub fn subscriptions(sql: &str) -> Option<Vec<Subscription>> {
    if !may_subscribe(sql.as_bytes()) {
        return None;
    }
    let tokens = lex(sql);
    let mut found = Vec::new();
    for statement in tokens.split(|t| *t == Token::Semicolon) {
        let channel = |t: &Token| match t {
            Token::Word(w) => Some(w.clone()),
            Token::Quoted(q) => Some(q.clone()),
            _ => None,
        };
        match statement {
            [] => {}
            [Token::Word(verb), name] if verb == "listen" => {
                found.push(Subscription::Listen(channel(name)?));
            }
            [Token::Word(verb), Token::Punct('*')] if verb == "unlisten" => {
                found.push(Subscription::UnlistenAll);
            }
            [Token::Word(verb), name] if verb == "unlisten" => {
                found.push(Subscription::Unlisten(channel(name)?));
            }
            _ => return None,
        }
    }
    (!found.is_empty()).then_some(found)
}

/// Whether a query string starts a transaction declared read-only: `BEGIN READ ONLY` or
/// `START TRANSACTION ... READ ONLY` (any isolation level beside it), or a bare `BEGIN`
/// followed, in the same string, by `SET TRANSACTION READ ONLY`. Routing to a replica relies
/// on the declaration alone: PostgreSQL then refuses any write in the transaction itself.
#[must_use]
pub fn declares_read_only(sql: &str) -> bool {
    if !starts_with_word(sql, &["begin", "start"]) {
        return false;
    }
    let tokens = lex(sql);
    let mut statements = tokens
        .split(|t| *t == Token::Semicolon)
        .filter(|s| !s.is_empty());
    let words = |statement: &[Token]| -> Vec<String> {
        statement
            .iter()
            .filter_map(|t| match t {
                Token::Word(w) => Some(w.clone()),
                _ => None,
            })
            .collect()
    };
    let read_only = |words: &[String]| words.windows(2).any(|w| w == ["read", "only"]);
    let Some(first) = statements.next().map(words) else {
        return false;
    };
    match first.first().map(String::as_str) {
        Some("begin") if read_only(&first) => true,
        Some("start") if first.get(1).map(String::as_str) == Some("transaction") => {
            read_only(&first)
        }
        Some("begin") if first.len() <= 2 => statements.next().map(words).is_some_and(|second| {
            second.starts_with(&["set".to_owned(), "transaction".to_owned()]) && read_only(&second)
        }),
        _ => false,
    }
}

/// A word beginning [`may_have_effects`] looks for, as the first eight bytes of a text would
/// read when taken as one little-endian number with letters folded to lower case: `bits` are
/// the marker's letters, `mask` covers as many bytes as the marker has.
struct Marker {
    bits: u64,
    mask: u64,
}

impl Marker {
    const fn new(word: &[u8]) -> Self {
        let mut bits = 0;
        let mut mask = 0;
        let mut i = 0;
        while i < word.len() {
            bits |= (word[i] as u64) << (8 * i);
            mask |= 0xff << (8 * i);
            i += 1;
        }
        Self { bits, mask }
    }
}

/// The keywords, or beginnings of keywords and function names, that make a statement matter
/// to [`classify`]; none is longer than eight bytes.
const EFFECT_MARKERS: [Marker; 9] = [
    Marker::new(b"set"),
    Marker::new(b"reset"),
    Marker::new(b"dealloc"),
    Marker::new(b"discard"),
    Marker::new(b"listen"),
    Marker::new(b"prepare"),
    Marker::new(b"temp"),
    Marker::new(b"hold"),
    Marker::new(b"advisory"),
];

/// Whether `word` (a text from a word's first letter on) begins with one of the markers,
/// compared eight bytes at a time. Setting bit 5 of each byte folds upper-case letters to lower
/// case and never turns anything else into a lower-case letter, so only letters can match.
fn begins_with_marker(word: &[u8]) -> bool {
    let mut head = [0; 8];
    let len = word.len().min(8);
    head[..len].copy_from_slice(&word[..len]);
    let folded = u64::from_le_bytes(head) | 0x2020_2020_2020_2020;
    EFFECT_MARKERS
        .iter()
        .any(|marker| folded & marker.mask == marker.bits)
}

/// Whether a query string could possibly matter to [`classify`]: a cheap screen, without
/// allocating, so that ordinary queries are not lexed on the hot path. It looks for words that
/// start with one of the keywords involved, in one pass over the bytes: each word's beginning is
/// compared with all the markers at once, the rest of the word is skipped.
#[must_use]
pub fn may_have_effects(sql: &str) -> bool {
    let bytes = sql.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at].is_ascii_alphabetic() {
            if begins_with_marker(&bytes[at..]) {
                return true;
            }
            at += 1;
            while at < bytes.len() && bytes[at].is_ascii_alphabetic() {
                at += 1;
            }
        } else {
            at += 1;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effects(sql: &str) -> Vec<Effect> {
        classify(sql).effects
    }

    #[test]
    fn listen_and_unlisten_alone_are_subscriptions() {
        assert_eq!(
            subscriptions("LISTEN Orders; listen \"Mixed Case\"; UNLISTEN *; unlisten x;"),
            Some(vec![
                Subscription::Listen("orders".into()),
                Subscription::Listen("Mixed Case".into()),
                Subscription::UnlistenAll,
                Subscription::Unlisten("x".into()),
            ])
        );
        for sql in [
            "LISTEN a; SELECT 1",
            "BEGIN; LISTEN a",
            "SELECT 'listen a'",
            "NOTIFY a",
            "",
            "LISTEN",
        ] {
            assert_eq!(subscriptions(sql), None, "{sql}");
        }
    }

    #[test]
    fn a_transaction_is_read_only_only_when_it_says_so_at_its_start() {
        for sql in [
            "BEGIN READ ONLY",
            "begin isolation level repeatable read, read only",
            "START TRANSACTION READ ONLY; SELECT 1",
            "BEGIN; SET TRANSACTION READ ONLY; SELECT 1",
            "BEGIN WORK; set transaction isolation level serializable read only",
        ] {
            assert!(declares_read_only(sql), "{sql}");
        }
        for sql in [
            "BEGIN",
            "BEGIN READ WRITE",
            "SELECT 'begin read only'",
            "/* read only */ BEGIN",
            "BEGIN; INSERT INTO t VALUES (1); SET TRANSACTION READ ONLY",
            "SET TRANSACTION READ ONLY",
            "SELECT 1",
        ] {
            assert!(!declares_read_only(sql), "{sql}");
        }
    }

    #[test]
    fn settings() {
        assert_eq!(
            effects("SET search_path TO app, public"),
            [Effect::Set("search_path".into())]
        );
        assert_eq!(
            effects("set session work_mem = '8MB'"),
            [Effect::Set("work_mem".into())]
        );
        assert_eq!(effects("SET LOCAL work_mem = '8MB'"), []);
        assert_eq!(effects("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"), []);
        assert_eq!(
            effects("SET TIME ZONE 'UTC'"),
            [Effect::Set("TimeZone".into())]
        );
        assert_eq!(
            effects("SET myapp.tenant = '7'"),
            [Effect::Set("myapp.tenant".into())]
        );
        assert_eq!(
            effects("RESET statement_timeout"),
            [Effect::Reset("statement_timeout".into())]
        );
        assert_eq!(effects("reset all"), [Effect::ResetAll]);
    }

    #[test]
    fn statements_and_pins() {
        assert_eq!(
            effects("DEALLOCATE PREPARE s1"),
            [Effect::Deallocate(Some("s1".into()))]
        );
        assert_eq!(effects("deallocate all"), [Effect::Deallocate(None)]);
        assert_eq!(effects("DISCARD ALL"), [Effect::DiscardAll]);
        assert_eq!(effects("LISTEN jobs"), [Effect::Pin("LISTEN")]);
        assert_eq!(
            effects("CREATE TEMP TABLE t (x int)"),
            [Effect::Pin("temporary table")]
        );
        assert_eq!(
            effects("SELECT pg_advisory_lock(1)"),
            [Effect::Pin("session advisory lock")]
        );
        assert_eq!(effects("SELECT pg_advisory_xact_lock(1)"), []);
        assert_eq!(
            effects("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
            [Effect::Pin("WITH HOLD cursor")]
        );
        assert_eq!(
            effects("PREPARE q AS SELECT 1"),
            [Effect::Pin("SQL PREPARE")]
        );
    }

    #[test]
    fn quotes_and_comments_hide_text() {
        assert_eq!(effects("SELECT 'SET x = 1; LISTEN y'"), []);
        assert_eq!(effects("SELECT $$ LISTEN y $$, $tag$;RESET ALL;$tag$"), []);
        assert_eq!(effects("/* LISTEN x */ SELECT 1 -- RESET ALL\n"), []);
        assert_eq!(effects("SELECT \"listen\" FROM t"), []);
        let multi = classify("BEGIN; SET statement_timeout = 5; COMMIT;");
        assert_eq!(multi.statements, 3);
        assert_eq!(multi.effects, [Effect::Set("statement_timeout".into())]);
        assert!(!may_have_effects(
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1"
        ));
        assert!(!may_have_effects("SELECT * FROM t OFFSET 5"));
        assert!(
            !may_have_effects("SELECT se"),
            "a word shorter than the marker"
        );
        assert!(
            may_have_effects("select 1;SET x=1"),
            "a word right after punctuation"
        );
        assert!(may_have_effects("reset all"));
        assert!(may_have_effects("SELECT pg_advisory_lock(1)"));
        assert!(may_have_effects("select set_config('a', 'b', false)"));
        assert!(may_have_effects("CREATE TEMPORARY TABLE x ()"));
        assert!(may_have_effects("DEALLOCATE ALL"));
        assert!(may_have_effects("discard all"));
        assert!(may_have_effects("Listen x"));
        assert!(may_have_effects("PREPARE p AS SELECT 1"));
        assert!(may_have_effects("DECLARE c CURSOR WITH HOLD FOR SELECT 1"));
        assert!(
            !may_have_effects("SELECT offset_ FROM t"),
            "bytes that are not letters do not fold into a match"
        );
        assert!(
            !may_have_effects("SELECT [ET"),
            "'[' folds to '{{', not to 's'"
        );
    }

    proptest::proptest! {
        /// The screen's rule, said plainly: a text may have effects when one of its words (a
        /// letter not preceded by a letter, and what follows) begins with a marker, in any case.
        #[test]
        fn the_screen_says_yes_exactly_when_a_word_begins_with_a_marker(
            sql in "([a-zA-Z_ ;(\\[{@`]|set|SeT|reset|dealloc|DISCARD|listen|prepare|temp|hold|advisory){0,12}"
        ) {
            let bytes = sql.as_bytes();
            let markers: [&[u8]; 9] = [
                b"set", b"reset", b"dealloc", b"discard", b"listen", b"prepare", b"temp", b"hold",
                b"advisory",
            ];
            let plainly = (0..bytes.len()).any(|at| {
                let starts_word = bytes[at].is_ascii_alphabetic()
                    && (at == 0 || !bytes[at - 1].is_ascii_alphabetic());
                starts_word
                    && markers.iter().any(|m| {
                        bytes.len() - at >= m.len() && bytes[at..at + m.len()].eq_ignore_ascii_case(m)
                    })
            });
            proptest::prop_assert_eq!(may_have_effects(&sql), plainly);
        }
    }
}
