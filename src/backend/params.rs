//! What a server connection's session settings are, so that a client's settings are applied on
//! checkout only where they differ.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The session parameters of one server connection.
#[derive(Debug, Clone, Default)]
pub struct ServerParams {
    /// Latest ParameterStatus value for each reported parameter.
    pub reported: BTreeMap<String, String>,
    /// ParameterStatus values right after login: what `RESET` returns to.
    login: BTreeMap<String, String>,
    /// Values the proxy or a client has set on top of the login defaults, in the form they were
    /// asked for (the server may report a normalized spelling).
    applied: BTreeMap<String, String>,
}

/// Whether `name` may be spliced into `SET name TO ...` unquoted.
#[must_use]
pub fn is_parameter_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        && !name.as_bytes()[0].is_ascii_digit()
}

fn quote_literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out.push('\'');
    out
}

impl ServerParams {
    /// Records the server's login-time parameters.
    pub fn finish_login(&mut self) {
        self.login = self.reported.clone();
    }

    /// Records a ParameterStatus seen during a client's traffic: the setting now in effect.
    pub fn observe(&mut self, name: &str, value: &str) {
        self.reported.insert(name.to_owned(), value.to_owned());
        if self.login.get(name).map(String::as_str) == Some(value) {
            self.applied.remove(name);
        } else {
            self.applied.insert(name.to_owned(), value.to_owned());
        }
    }

    /// The value in effect for `name`, as far as the proxy knows.
    #[must_use]
    pub fn effective(&self, name: &str) -> Option<&str> {
        self.applied
            .get(name)
            .or_else(|| self.login.get(name))
            .map(String::as_str)
    }

    /// The SQL that makes this connection's settings equal to `wanted` (names outside `wanted`
    /// go back to their login defaults), or `None` when nothing differs. Call
    /// [`ServerParams::synced`] once the server has run it.
    #[must_use]
    pub fn sync_sql(&self, wanted: &BTreeMap<String, String>) -> Option<String> {
        // set_config() takes a value in its text form, so list settings such as search_path
        // keep their elements (SET x TO 'a, b' would make them one quoted element).
        let mut sets = String::new();
        for (name, value) in wanted {
            if self.effective(name) != Some(value.as_str()) && is_parameter_name(name) {
                sets.push_str(if sets.is_empty() { "SELECT " } else { ", " });
                let _ = write!(
                    sets,
                    "set_config({}, {}, false)",
                    quote_literal(name),
                    quote_literal(value)
                );
            }
        }
        let mut sql = if sets.is_empty() { sets } else { sets + ";" };
        for name in self.applied.keys() {
            if !wanted.contains_key(name) && is_parameter_name(name) {
                let _ = write!(sql, "RESET {name};");
            }
        }
        (!sql.is_empty()).then_some(sql)
    }

    /// Records that [`ServerParams::sync_sql`] for `wanted` has run.
    pub fn synced(&mut self, wanted: &BTreeMap<String, String>) {
        self.applied.retain(|name, _| wanted.contains_key(name));
        for (name, value) in wanted {
            if self.login.get(name) == Some(value) {
                self.applied.remove(name);
            } else {
                self.applied.insert(name.clone(), value.clone());
            }
        }
    }

    /// Records a `RESET name`: that setting is back to its login default.
    pub fn forget(&mut self, name: &str) {
        self.applied.remove(name);
    }

    /// Records a `DISCARD ALL` / `RESET ALL`: everything is back to the login defaults.
    pub fn reset(&mut self) {
        self.applied.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn only_differences_are_sent() {
        let mut params = ServerParams {
            reported: map(&[("application_name", ""), ("TimeZone", "UTC")]),
            ..ServerParams::default()
        };
        params.finish_login();
        assert_eq!(params.sync_sql(&map(&[("TimeZone", "UTC")])), None);
        let wanted = map(&[("application_name", "it's"), ("search_path", "app")]);
        assert_eq!(
            params.sync_sql(&wanted).unwrap(),
            "SELECT set_config('application_name', 'it''s', false), set_config('search_path', 'app', false);"
        );
        params.synced(&wanted);
        assert_eq!(params.sync_sql(&wanted), None);
        assert_eq!(
            params.sync_sql(&BTreeMap::new()).unwrap(),
            "RESET application_name;RESET search_path;"
        );
    }

    #[test]
    fn observed_changes_count() {
        let mut params = ServerParams {
            reported: map(&[("DateStyle", "ISO, MDY")]),
            ..ServerParams::default()
        };
        params.finish_login();
        params.observe("DateStyle", "German, DMY");
        assert_eq!(params.effective("DateStyle"), Some("German, DMY"));
        assert_eq!(
            params.sync_sql(&BTreeMap::new()).unwrap(),
            "RESET DateStyle;"
        );
        params.observe("DateStyle", "ISO, MDY");
        assert_eq!(params.sync_sql(&BTreeMap::new()), None);
    }

    #[test]
    fn hostile_names_are_never_spliced() {
        assert!(!is_parameter_name("a;DROP TABLE x"));
        assert!(is_parameter_name("pg_trgm.similarity_threshold"));
    }
}
