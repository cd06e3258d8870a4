//! A client's named prepared statements in transaction mode. The client's names map to
//! server-side names derived from the statement itself (query text and parameter types), so that
//! any server connection can hold it, and clients preparing the same statement share one plan.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Prefix of every server-side statement name pgsidecar creates.
pub const SERVER_NAME_PREFIX: &str = "pgsc_";

/// One statement as pgsidecar prepares it on servers.
#[derive(Debug)]
pub struct StatementDef {
    /// Name on every server connection.
    pub server_name: Arc<str>,
    /// The Parse body after the name: query text and parameter types.
    pub parse_tail: Bytes,
}

impl StatementDef {
    /// The definition for a Parse with this tail.
    #[must_use]
    pub fn new(parse_tail: Bytes) -> Self {
        let digest = Sha256::digest(&parse_tail);
        let mut name = String::with_capacity(SERVER_NAME_PREFIX.len() + 32);
        name.push_str(SERVER_NAME_PREFIX);
        for byte in &digest[..16] {
            let _ = write!(name, "{byte:02x}");
        }
        Self {
            server_name: name.into(),
            parse_tail,
        }
    }

    /// The query text alone, sharing the definition's buffer.
    #[must_use]
    pub fn query_text(&self) -> Bytes {
        let end = self
            .parse_tail
            .iter()
            .position(|b| *b == 0)
            .unwrap_or(self.parse_tail.len());
        self.parse_tail.slice(..end)
    }
}

/// The statements one client has prepared, by the client's names.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<Box<str>, Arc<StatementDef>>,
}

impl ClientStatements {
    /// Records (or replaces) the client's statement `name`.
    pub fn insert(&mut self, name: &str, def: Arc<StatementDef>) {
        self.by_name.insert(name.into(), def);
    }

    /// The statement the client calls `name`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Arc<StatementDef>> {
        self.by_name.get(name)
    }

    /// Forgets `name`; true if it existed.
    pub fn remove(&mut self, name: &str) -> bool {
        self.by_name.remove(name).is_some()
    }

    /// Forgets every statement (`DEALLOCATE ALL`, `DISCARD ALL`).
    pub fn clear(&mut self) {
        self.by_name.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_statement_same_name_different_types_different_name() {
        let a = StatementDef::new(Bytes::from_static(b"SELECT $1\0\0\x01\0\0\0\x17"));
        let b = StatementDef::new(Bytes::from_static(b"SELECT $1\0\0\x01\0\0\0\x17"));
        let c = StatementDef::new(Bytes::from_static(b"SELECT $1\0\0\x01\0\0\0\x19"));
        assert_eq!(a.server_name, b.server_name);
        assert_ne!(a.server_name, c.server_name);
        assert!(a.server_name.starts_with(SERVER_NAME_PREFIX));
        assert!(a.server_name.len() < 64);
    }
}
