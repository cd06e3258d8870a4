//! What a span says about a statement (its name, operation, table, summary and sanitised text),
//! worked out once per distinct statement and shared by every span of it. An application that
//! sends its values as parameters runs the same few hundred texts over and over: those are
//! remembered by their text, and a repeat costs one lookup. A text with literals in it is
//! usually one execution's own (a cache of such texts only churns), but its sanitised text is
//! not: those are remembered by a fingerprint of the sanitised text, taken as the text is lexed,
//! so a repeat costs one pass of the lexer and builds no string.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hasher as _};
use std::ops::Range;
use std::sync::{Arc, RwLock};

use foldhash::fast::RandomState;

use opentelemetry::KeyValue;

use super::query_spans::EncodedAttributes;
use super::sql_text::{QueryShape, fingerprint, has_layout_of, shape};

/// Distinct statements remembered; beyond this the memory starts over.
const STATEMENTS_MAX: usize = 2048;

/// Statements longer than this are described afresh each time instead of being remembered.
const LONGEST_REMEMBERED: usize = 4096;

/// The span name and the statement attributes of one statement text.
#[derive(Debug)]
pub struct StatementFacts {
    /// Whether the text is worth remembering: it has no literals (the values travel as
    /// parameters), so it comes back.
    reusable: bool,
    /// The span's name: the query summary, or `postgresql` when there is none.
    pub name: Arc<str>,
    /// `db.operation.name`, `db.collection.name`, `db.query.summary`, `db.query.text`, as the
    /// statement has them, encoded once for every span of the statement.
    pub attributes: EncodedAttributes,
}

impl StatementFacts {
    /// Works out the facts of `sql`.
    #[must_use]
    pub fn of(sql: &[u8]) -> Self {
        Self::of_shape(&shape(&utf8_text(sql)))
    }

    fn of_shape(shape: &QueryShape) -> Self {
        let summary = shape.summary();
        let mut attributes = Vec::with_capacity(4);
        if let Some(operation) = &shape.operation {
            attributes.push(KeyValue::new("db.operation.name", operation.clone()));
        }
        if let Some(collection) = shape.collection() {
            attributes.push(KeyValue::new("db.collection.name", collection.to_owned()));
        }
        if let Some(summary) = &summary {
            attributes.push(KeyValue::new("db.query.summary", summary.clone()));
        }
        if !shape.text.is_empty() {
            attributes.push(KeyValue::new("db.query.text", shape.text.clone()));
        }
        Self {
            reusable: !shape.has_literals,
            name: Arc::from(summary.as_deref().unwrap_or("postgresql")),
            attributes: EncodedAttributes::new(&attributes),
        }
    }
}

/// `sql` as text: borrowed when it is valid UTF-8, as it nearly always is (the lossy
/// conversion's own check is several times slower than `from_utf8`'s).
fn utf8_text(sql: &[u8]) -> Cow<'_, str> {
    std::str::from_utf8(sql).map_or_else(|_| String::from_utf8_lossy(sql), Cow::Borrowed)
}

/// A bounded memory of facts; beyond [`STATEMENTS_MAX`] entries it starts over. Its hasher is
/// seeded at random per process: fast on the texts a span looks up, and not predictable by a
/// client that would like its statements to collide.
#[derive(Debug)]
struct Remembered<K>(RwLock<HashMap<K, Arc<StatementFacts>, RandomState>>);

impl<K> Default for Remembered<K> {
    fn default() -> Self {
        Self(RwLock::default())
    }
}

impl<K: std::hash::Hash + Eq> Remembered<K> {
    fn get<Q>(&self, key: &Q) -> Option<Arc<StatementFacts>>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        self.0
            .read()
            .expect("statement cache lock")
            .get(key)
            .cloned()
    }

    fn insert(&self, key: K, facts: &Arc<StatementFacts>) {
        let mut known = self.0.write().expect("statement cache lock");
        if known.len() >= STATEMENTS_MAX {
            known.clear();
        }
        known.insert(key, Arc::clone(facts));
    }
}

/// The facts of the statements seen lately: by their text for texts without literals, by the
/// fingerprint of their sanitised text for the others.
#[derive(Debug, Default)]
pub struct StatementCache {
    by_text: Remembered<Box<[u8]>>,
    by_fingerprint: Remembered<u64>,
    /// Seeds the fingerprints, at random: 64 bits of a keyed hash, so that two different
    /// sanitised texts sharing one is as likely as guessing the key.
    fingerprints: RandomState,
}

impl StatementCache {
    /// The facts of `sql`, worked out now if it was not seen lately.
    ///
    /// # Panics
    /// If the lock was poisoned.
    pub fn facts(&self, sql: &[u8], last: &mut LastStatement) -> Arc<StatementFacts> {
        if let Some(facts) = self.by_text.get(sql) {
            return facts;
        }
        let text = utf8_text(sql);
        if let Some(facts) = &last.facts
            && has_layout_of(&text, &last.text, &last.literals)
        {
            return Arc::clone(facts);
        }
        let mut hasher = self.fingerprints.build_hasher();
        let mut literals = Vec::new();
        let has_literals = fingerprint(&text, &mut hasher, &mut literals);
        let key = hasher.finish();
        let remembered = if has_literals {
            self.by_fingerprint.get(&key)
        } else {
            None
        };
        let facts = remembered.unwrap_or_else(|| {
            let facts = Arc::new(StatementFacts::of_shape(&shape(&text)));
            if sql.len() <= LONGEST_REMEMBERED {
                if facts.reusable {
                    self.by_text.insert(sql.into(), &facts);
                } else {
                    self.by_fingerprint.insert(key, &facts);
                }
            }
            facts
        });
        if has_literals {
            last.remember(&text, literals, &facts);
        }
        facts
    }
}

/// The last literal-laden text a traced session had described, where its literals were, and
/// its facts: the session's next text that differs from it only in its literals (an
/// application that puts its values into the text sends the same few statements over and over)
/// gets the same facts after its literals alone are lexed, instead of the whole text
/// ([`has_layout_of`]).
#[derive(Debug, Default)]
pub struct LastStatement {
    text: Vec<u8>,
    literals: Vec<Range<usize>>,
    facts: Option<Arc<StatementFacts>>,
}

impl LastStatement {
    /// Longest text remembered: a session keeps at most this much for it.
    const TEXT_MAX: usize = 2048;

    /// Remembers a literal-laden `text`, its literals' places and its facts.
    fn remember(&mut self, text: &str, literals: Vec<Range<usize>>, facts: &Arc<StatementFacts>) {
        if text.len() <= Self::TEXT_MAX {
            self.text.clear();
            self.text.extend_from_slice(text.as_bytes());
            self.literals = literals;
            self.facts = Some(Arc::clone(facts));
        } else {
            *self = Self::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use prost::Message as _;

    /// The attributes as a collector decodes them.
    fn decoded(facts: &StatementFacts) -> Vec<(String, Option<Value>)> {
        Span::decode(facts.attributes.bytes())
            .unwrap()
            .attributes
            .into_iter()
            .map(|kv| (kv.key, kv.value.and_then(|v| v.value)))
            .collect()
    }

    fn text(facts: &StatementFacts, key: &str) -> Option<String> {
        decoded(facts)
            .into_iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, value)| match value {
                Some(Value::StringValue(text)) => Some(text),
                _ => None,
            })
    }

    #[test]
    fn a_statement_is_described_once_and_shared() {
        let cache = StatementCache::default();
        let first = cache.facts(
            b"SELECT * FROM documents WHERE id = $1",
            &mut LastStatement::default(),
        );
        let again = cache.facts(
            b"SELECT * FROM documents WHERE id = $1",
            &mut LastStatement::default(),
        );
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(&*first.name, "SELECT documents");
        assert_eq!(
            text(&first, "db.collection.name").as_deref(),
            Some("documents")
        );
        let literal = cache.facts(
            b"SELECT * FROM documents WHERE id = 42",
            &mut LastStatement::default(),
        );
        let sanitised = text(&literal, "db.query.text").unwrap();
        assert!(!sanitised.contains("42"), "{sanitised}");
        let other_value = cache.facts(
            b"SELECT * FROM documents WHERE id = 7",
            &mut LastStatement::default(),
        );
        assert!(
            Arc::ptr_eq(&literal, &other_value),
            "texts that differ only in their literals share their facts"
        );
        let other_table = cache.facts(
            b"SELECT * FROM chunks WHERE id = 7",
            &mut LastStatement::default(),
        );
        assert_eq!(&*other_table.name, "SELECT chunks");
    }

    #[test]
    fn a_session_s_next_text_with_other_literals_gets_the_last_one_s_facts() {
        let cache = StatementCache::default();
        let mut last = LastStatement::default();
        let first = cache.facts(b"SELECT * FROM documents WHERE id = 42", &mut last);
        assert!(Arc::ptr_eq(last.facts.as_ref().unwrap(), &first));
        // The cache's own memory is cleared: only the session's last statement can answer.
        let fresh = StatementCache::default();
        let next = fresh.facts(b"SELECT * FROM documents WHERE id = 7", &mut last);
        assert!(
            Arc::ptr_eq(&first, &next),
            "answered from the last statement"
        );
        let other = fresh.facts(b"SELECT * FROM chunks WHERE id = 7", &mut last);
        assert_eq!(&*other.name, "SELECT chunks");
        assert!(Arc::ptr_eq(last.facts.as_ref().unwrap(), &other));
        fresh.facts(b"SELECT * FROM chunks WHERE id = $1", &mut last);
        assert!(
            last.facts.is_some(),
            "a text without literals leaves the last one alone"
        );
        let long = format!("SELECT {}1", " ".repeat(LastStatement::TEXT_MAX));
        fresh.facts(long.as_bytes(), &mut last);
        assert!(
            last.facts.is_none() && last.text.capacity() == 0,
            "nothing kept for a long text"
        );
    }

    #[test]
    fn without_a_summary_the_span_is_named_after_the_system() {
        let facts = StatementFacts::of(b"");
        assert_eq!(&*facts.name, "postgresql");
        assert!(decoded(&facts).is_empty());
    }
}
