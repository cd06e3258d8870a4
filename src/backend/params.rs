//! What a server connection's session settings are, so that a client's settings are applied on
//! checkout only where they differ.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// The reported parameter a SET can change only through its own statement, which resets `role`:
/// it is applied (or reset) before every other setting.
pub const SESSION_AUTHORIZATION: &str = "session_authorization";

/// Parameters no session can change, though the server reports them. `is_superuser` is hidden
/// from `pg_settings`, so it is always here; the rest is learned from the server's catalog.
const ALWAYS_FIXED: &[&str] = &["is_superuser"];

/// What is fixed when the catalog could not be read: PostgreSQL's reported `internal` settings.
const FIXED_WITHOUT_CATALOG: &[&str] = &[
    "in_hot_standby",
    "integer_datetimes",
    "server_encoding",
    "server_version",
];

/// The query that lists every setting a session cannot change (`pg_settings.context` other than
/// `user` and `superuser`); run once per pool.
pub const FIXED_PARAMS_SQL: &str = "SELECT coalesce(string_agg(name, ','), '') FROM pg_settings \
                                    WHERE context NOT IN ('user', 'superuser')";

/// Reported parameters that are never replayed or reset on a server connection, because
/// `SET` would fail (`55P02 parameter "is_superuser" cannot be changed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedParams(Arc<BTreeSet<String>>);

impl Default for FixedParams {
    fn default() -> Self {
        Self::from_names(FIXED_WITHOUT_CATALOG.iter().copied())
    }
}

impl FixedParams {
    /// The set from the comma-separated names [`FIXED_PARAMS_SQL`] returned.
    #[must_use]
    pub fn from_catalog(names: &str) -> Self {
        Self::from_names(names.split(',').filter(|n| !n.is_empty()))
    }

    fn from_names<'a>(names: impl Iterator<Item = &'a str>) -> Self {
        Self(Arc::new(
            names
                .chain(ALWAYS_FIXED.iter().copied())
                .map(str::to_owned)
                .collect(),
        ))
    }

    /// Whether no session can change `name`.
    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// A set of session settings by name, shared rather than copied: a server connection keeps the
/// client settings it was last brought to by holding the client's set, and a `RESET ALL` gives
/// the client back its startup set without copying it.
pub type Settings = Arc<BTreeMap<String, String>>;

/// The session parameters of one server connection.
#[derive(Debug, Clone, Default)]
pub struct ServerParams {
    /// Reported parameters no session can change: never replayed, never reset.
    pub fixed: FixedParams,
    /// Latest ParameterStatus value for each reported parameter.
    pub reported: BTreeMap<String, String>,
    /// ParameterStatus values right after login: what `RESET` returns to.
    login: BTreeMap<String, String>,
    /// Values the proxy or a client has set on top of the login defaults, in the form they were
    /// asked for (the server may report a normalized spelling).
    applied: BTreeMap<String, String>,
    /// The client settings this connection was last brought to, as long as nothing changed
    /// its settings since: a checkout by a client with the same settings then compares one
    /// pointer (or one small map) instead of working out every step.
    in_step_with: Option<Settings>,
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

fn set_config(name: &str, value: &str) -> String {
    format!(
        "SELECT set_config({}, {}, false)",
        quote_literal(name),
        quote_literal(value)
    )
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
        self.in_step_with = None;
    }

    /// Whether the connection was brought to exactly `wanted` and nothing changed it since, so
    /// that [`ServerParams::sync_sql`] would have nothing to do.
    #[must_use]
    pub fn in_step_with(&self, wanted: &Settings) -> bool {
        self.in_step_with
            .as_ref()
            .is_some_and(|mark| Arc::ptr_eq(mark, wanted) || **mark == **wanted)
    }

    /// Records that the connection's settings are now `wanted` (after [`ServerParams::synced`],
    /// or when [`ServerParams::sync_sql`] found nothing to do).
    pub fn mark_in_step(&mut self, wanted: &Settings) {
        self.in_step_with = Some(Arc::clone(wanted));
    }

    /// Records a ParameterStatus seen during a client's traffic: the setting now in effect.
    pub fn observe(&mut self, name: &str, value: &str) {
        self.in_step_with = None;
        self.reported.insert(name.to_owned(), value.to_owned());
        if self.fixed.contains(name) || self.login.get(name).map(String::as_str) == Some(value) {
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

    /// Whether `name` may be replayed or reset on a server connection at all.
    fn replayable(&self, name: &str) -> bool {
        is_parameter_name(name) && !self.fixed.contains(name)
    }

    /// The statements that make this connection's settings equal to `wanted` (names outside
    /// `wanted` go back to their login defaults), each with the setting it changes; empty when
    /// nothing differs. Parameters no session can change are skipped. `session_authorization`
    /// comes first, because changing it resets `role`, which is then applied again.
    #[must_use]
    pub fn sync_steps(&self, wanted: &BTreeMap<String, String>) -> Vec<(String, String)> {
        let mut steps = Vec::new();
        let wanted_auth = wanted.get(SESSION_AUTHORIZATION).map(String::as_str);
        let auth_changes = self.effective(SESSION_AUTHORIZATION) != wanted_auth
            && (wanted_auth.is_some() || self.applied.contains_key(SESSION_AUTHORIZATION));
        if auth_changes {
            let sql = match wanted_auth {
                Some(user) => set_config(SESSION_AUTHORIZATION, user),
                None => format!("RESET {SESSION_AUTHORIZATION}"),
            };
            steps.push((SESSION_AUTHORIZATION.to_owned(), sql));
        }
        // set_config() takes a value in its text form, so list settings such as search_path
        // keep their elements (SET x TO 'a, b' would make them one quoted element).
        for (name, value) in wanted {
            let stale = if auth_changes && name == "role" {
                value != "none"
            } else {
                self.effective(name) != Some(value.as_str())
            };
            if name != SESSION_AUTHORIZATION && stale && self.replayable(name) {
                steps.push((name.clone(), set_config(name, value)));
            }
        }
        for name in self.applied.keys() {
            if name != SESSION_AUTHORIZATION
                && !wanted.contains_key(name)
                && self.replayable(name)
                && !(auth_changes && name == "role")
            {
                steps.push((name.clone(), format!("RESET {name}")));
            }
        }
        steps
    }

    /// The steps of [`ServerParams::sync_steps`] as one simple query, or `None` when nothing
    /// differs. Call [`ServerParams::synced`] once the server has run it.
    #[must_use]
    pub fn sync_sql(&self, wanted: &BTreeMap<String, String>) -> Option<String> {
        let steps = self.sync_steps(wanted);
        (!steps.is_empty()).then(|| {
            steps
                .iter()
                .fold(String::new(), |sql, (_, step)| sql + step + ";")
        })
    }

    /// Records that [`ServerParams::sync_sql`] for `wanted` has run.
    pub fn synced(&mut self, wanted: &BTreeMap<String, String>) {
        self.in_step_with = None;
        self.applied.retain(|name, _| wanted.contains_key(name));
        for (name, value) in wanted {
            if self.fixed.contains(name) || self.login.get(name) == Some(value) {
                self.applied.remove(name);
            } else {
                self.applied.insert(name.clone(), value.clone());
            }
        }
    }

    /// `name` spelled as the server reports it (`timezone` -> `TimeZone`): setting names are
    /// case-insensitive, and SQL lowercases them, so a name from a statement is matched to the
    /// reported one before it is compared or stored.
    #[must_use]
    pub fn canonical(&self, name: &str) -> String {
        self.reported
            .keys()
            .find(|n| n.eq_ignore_ascii_case(name))
            .map_or_else(|| name.to_owned(), Clone::clone)
    }

    /// Records a `RESET name`: that setting is back to its login default.
    pub fn forget(&mut self, name: &str) {
        self.in_step_with = None;
        self.applied.remove(name);
    }

    /// Records a `DISCARD ALL` / `RESET ALL`: everything is back to the login defaults.
    pub fn reset(&mut self) {
        self.in_step_with = None;
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
            "SELECT set_config('application_name', 'it''s', false);SELECT set_config('search_path', 'app', false);"
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
    fn parameters_no_session_can_change_are_never_replayed_or_reset() {
        let mut params = ServerParams {
            reported: map(&[("is_superuser", "on"), ("server_version", "15.18")]),
            ..ServerParams::default()
        };
        params.finish_login();
        params.observe("is_superuser", "off");
        let wanted = map(&[("is_superuser", "off"), ("in_hot_standby", "on")]);
        assert_eq!(params.sync_sql(&wanted), None);
        assert_eq!(params.sync_sql(&BTreeMap::new()), None);
        let learned = FixedParams::from_catalog("server_version,data_checksums");
        assert!(learned.contains("data_checksums") && learned.contains("is_superuser"));
        assert!(!learned.contains("application_name"));
    }

    #[test]
    fn session_authorization_comes_first_and_role_follows_it() {
        let mut params = ServerParams {
            reported: map(&[("session_authorization", "postgres")]),
            ..ServerParams::default()
        };
        params.finish_login();
        params.observe("role", "reader");
        // A client that ran SET SESSION AUTHORIZATION alice; SET ROLE reader.
        let wanted = map(&[("role", "reader"), ("session_authorization", "alice")]);
        assert_eq!(
            params.sync_sql(&wanted).unwrap(),
            "SELECT set_config('session_authorization', 'alice', false);SELECT set_config('role', 'reader', false);"
        );
        params.synced(&wanted);
        assert_eq!(params.sync_sql(&wanted), None);
        // The next client wants neither: one RESET puts back the login user and role none.
        assert_eq!(
            params.sync_sql(&BTreeMap::new()).unwrap(),
            "RESET session_authorization;"
        );
    }

    #[test]
    fn a_connection_stays_in_step_with_equal_settings_until_something_changes_it() {
        let mut params = ServerParams {
            reported: map(&[("TimeZone", "UTC"), ("application_name", "")]),
            ..ServerParams::default()
        };
        params.finish_login();
        let wanted: Settings = Arc::new(map(&[("application_name", "app")]));
        assert!(
            !params.in_step_with(&wanted),
            "never brought to any settings"
        );
        params.synced(&wanted);
        params.mark_in_step(&wanted);
        assert!(params.in_step_with(&wanted));
        let same_elsewhere: Settings = Arc::new(map(&[("application_name", "app")]));
        assert!(
            params.in_step_with(&same_elsewhere),
            "another client's equal settings need no steps either"
        );
        let other: Settings = Arc::new(map(&[("application_name", "other")]));
        assert!(!params.in_step_with(&other));
        params.observe("TimeZone", "Europe/Paris");
        assert!(
            !params.in_step_with(&wanted),
            "a setting the server reported changing breaks the step"
        );
        assert!(
            params.sync_sql(&wanted).is_some(),
            "and the step is worked out again"
        );
        for change in [
            ServerParams::reset as fn(&mut ServerParams),
            |p| p.forget("application_name"),
            ServerParams::finish_login,
        ] {
            params.mark_in_step(&wanted);
            change(&mut params);
            assert!(!params.in_step_with(&wanted));
        }
    }

    #[test]
    fn hostile_names_are_never_spliced() {
        assert!(!is_parameter_name("a;DROP TABLE x"));
        assert!(is_parameter_name("pg_trgm.similarity_threshold"));
    }
}
