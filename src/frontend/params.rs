//! The session settings a client asked for in its startup packet, which the proxy re-applies on
//! every server connection that serves the client.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use crate::backend::Settings;

/// The startup settings of every client that sent none, shared: such a client then keeps no
/// map of its own (a change copies it first).
static NO_SETTINGS: LazyLock<Settings> = LazyLock::new(Settings::default);

/// Startup keys that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// Splits a libpq `options` value into its `-c name=value` / `--name=value` settings.
///
/// # Errors
/// A message naming the switch that is not a setting.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut settings = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let assignment = if word == "-c" {
            words.next().ok_or("`-c` without a setting")?
        } else if let Some(rest) = word.strip_prefix("--").or_else(|| word.strip_prefix("-c")) {
            rest.to_owned()
        } else {
            return Err(format!(
                "unsupported startup option `{word}`; only -c name=value is allowed"
            ));
        };
        let (name, value) = assignment
            .split_once('=')
            .ok_or_else(|| format!("startup option `{assignment}` is not name=value"))?;
        settings.push((name.replace('-', "_"), value.to_owned()));
    }
    Ok(settings)
}

/// The client's requested settings, kept in sync with what its own SQL changes.
#[derive(Debug, Clone, Default)]
pub struct ClientParams {
    startup: Settings,
    wanted: Settings,
}

impl ClientParams {
    /// Collects the settings of a startup packet.
    ///
    /// # Errors
    /// A message about a malformed `options` value or setting name.
    pub fn from_startup(startup: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut wanted = BTreeMap::new();
        for (name, value) in startup {
            if NOT_SETTINGS.contains(&name.as_str()) || name.starts_with("_pq_.") {
                continue;
            }
            wanted.insert(name.clone(), value.clone());
        }
        if let Some(options) = startup.get("options") {
            wanted.extend(parse_options(options)?);
        }
        if let Some(bad) = wanted
            .keys()
            .find(|n| !crate::backend::is_parameter_name(n))
        {
            return Err(format!("invalid parameter name \"{bad}\""));
        }
        let startup = if wanted.is_empty() {
            Arc::clone(&NO_SETTINGS)
        } else {
            Arc::new(wanted)
        };
        Ok(Self {
            wanted: Arc::clone(&startup),
            startup,
        })
    }

    /// Gives the session `name = value` unless its startup packet set `name`: the setting is
    /// then part of the session's startup settings (re-applied on every server connection,
    /// restored by `RESET`), and the client's own `SET` still wins.
    pub fn default_to(&mut self, name: &str, value: &str) {
        if !self.startup.contains_key(name) {
            Arc::make_mut(&mut self.startup).insert(name.to_owned(), value.to_owned());
            Arc::make_mut(&mut self.wanted).insert(name.to_owned(), value.to_owned());
        }
    }

    /// Swaps the client's startup settings, while it has not changed them, for the copy
    /// `share` gives (one map for every client that sent the same).
    pub fn share_startup(&mut self, share: impl FnOnce(Settings) -> Settings) {
        if Arc::ptr_eq(&self.startup, &self.wanted) && !self.startup.is_empty() {
            let shared = share(Arc::clone(&self.startup));
            self.wanted = Arc::clone(&shared);
            self.startup = shared;
        }
    }

    /// The settings in effect for this client.
    #[must_use]
    pub fn wanted(&self) -> &BTreeMap<String, String> {
        &self.wanted
    }

    /// The settings in effect for this client, as the shared set a server connection can
    /// remember having been brought to.
    #[must_use]
    pub fn settings(&self) -> &Settings {
        &self.wanted
    }

    /// Records a ParameterStatus the client's own statements caused.
    pub fn observe(&mut self, name: &str, value: &str) {
        if self.wanted.get(name).is_some_and(|v| v == value) {
            return;
        }
        let wanted = Arc::make_mut(&mut self.wanted);
        forget_any_case(wanted, name);
        wanted.insert(name.to_owned(), value.to_owned());
    }

    /// `RESET name`: back to the startup value, or the server default. Setting names are
    /// case-insensitive: `RESET timezone` restores a startup `TimeZone`.
    pub fn reset(&mut self, name: &str) {
        let wanted = Arc::make_mut(&mut self.wanted);
        forget_any_case(wanted, name);
        if let Some((startup_name, value)) = self
            .startup
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            wanted.insert(startup_name.clone(), value.clone());
        }
    }

    /// Forgets a setting the server would not accept again, so that it is not retried on every
    /// checkout (the client then runs with the server's value).
    pub fn drop_setting(&mut self, name: &str) {
        Arc::make_mut(&mut self.wanted).remove(name);
        Arc::make_mut(&mut self.startup).remove(name);
    }

    /// `RESET ALL` / `DISCARD ALL`: back to the startup settings.
    pub fn reset_all(&mut self) {
        self.wanted = Arc::clone(&self.startup);
    }
}

/// Removes `name` from `settings` whatever the case it was stored in (PostgreSQL's setting
/// names are case-insensitive; startup packets and SQL spell them differently).
fn forget_any_case(settings: &mut BTreeMap<String, String>, name: &str) {
    settings.retain(|n, _| !n.eq_ignore_ascii_case(name));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_split_like_libpq_does() {
        let parsed =
            parse_options(r"-c statement_timeout=5s --search-path=a,b -c x.y=with\ space").unwrap();
        assert_eq!(
            parsed,
            vec![
                ("statement_timeout".to_owned(), "5s".to_owned()),
                ("search_path".to_owned(), "a,b".to_owned()),
                ("x.y".to_owned(), "with space".to_owned()),
            ]
        );
        assert!(parse_options("-d 5").is_err());
    }

    #[test]
    fn shared_startup_settings_are_copied_before_a_client_changes_them() {
        let mut startup = BTreeMap::new();
        startup.insert("application_name".to_owned(), "app".to_owned());
        let mut first = ClientParams::from_startup(&startup).unwrap();
        let mut second = ClientParams::from_startup(&startup).unwrap();
        let shared = Arc::clone(first.settings());
        first.share_startup(|_| Arc::clone(&shared));
        second.share_startup(|_| Arc::clone(&shared));
        assert!(Arc::ptr_eq(first.settings(), second.settings()));
        first.observe("application_name", "changed");
        let app = |client: &ClientParams| client.wanted().get("application_name").cloned();
        assert_eq!(app(&second).as_deref(), Some("app"));
        assert_eq!(app(&first).as_deref(), Some("changed"));
        first.reset_all();
        assert_eq!(app(&first).as_deref(), Some("app"));
    }

    #[test]
    fn reset_restores_the_startup_value_whatever_the_case_of_the_name() {
        let mut startup = BTreeMap::new();
        startup.insert("TimeZone".to_owned(), "Asia/Tokyo".to_owned());
        let mut client = ClientParams::from_startup(&startup).unwrap();
        client.observe("timezone", "UTC");
        assert_eq!(
            client.wanted().len(),
            1,
            "one entry per setting: {:?}",
            client.wanted()
        );
        client.reset("timezone");
        assert_eq!(
            client.wanted().get("TimeZone").map(String::as_str),
            Some("Asia/Tokyo")
        );
        assert_eq!(client.wanted().len(), 1);
        client.observe("datestyle", "German");
        client.reset("DateStyle");
        assert!(
            !client.wanted().contains_key("datestyle"),
            "no startup value: the server's default"
        );
    }

    #[test]
    fn a_version_search_path_is_a_default_the_client_can_override() {
        let mut served = ClientParams::default();
        served.default_to("search_path", "app_v0002, public");
        assert_eq!(served.wanted()["search_path"], "app_v0002, public");
        served.observe("search_path", "mine");
        served.reset("search_path");
        assert_eq!(
            served.wanted()["search_path"],
            "app_v0002, public",
            "RESET goes back to the version's path"
        );
        let mut startup = BTreeMap::new();
        startup.insert("search_path".to_owned(), "own".to_owned());
        let mut own = ClientParams::from_startup(&startup).unwrap();
        own.default_to("search_path", "app_v0002, public");
        assert_eq!(own.wanted()["search_path"], "own");
    }

    #[test]
    fn startup_keeps_only_settings() {
        let mut startup = BTreeMap::new();
        for (k, v) in [
            ("user", "u"),
            ("database", "d"),
            ("application_name", "app"),
            ("_pq_.x", "1"),
            ("options", "-c work_mem=8MB"),
        ] {
            startup.insert(k.to_owned(), v.to_owned());
        }
        let params = ClientParams::from_startup(&startup).unwrap();
        let names: Vec<_> = params.wanted().keys().map(String::as_str).collect();
        assert_eq!(names, ["application_name", "work_mem"]);
        startup.insert("bad;name".to_owned(), "x".to_owned());
        assert!(ClientParams::from_startup(&startup).is_err());
    }
}
