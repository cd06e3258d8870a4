//! What a pool's server says at login, remembered so that a client can be logged in without a
//! server connection: the ParameterStatus values a fresh server session reports, and how the
//! server spells the values clients ask for (`DateStyle=ISO` is reported as `ISO, MDY`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// Longest `application_name` PostgreSQL keeps unchanged (`NAMEDATALEN - 1`).
const APPLICATION_NAME_MAX: usize = 63;

/// Distinct (setting, asked value) spellings remembered per pool; beyond this the memory starts
/// over, so that clients inventing values cannot grow it without bound.
const SPELLINGS_MAX: usize = 1024;

/// The parameters a pool's clients are greeted with. Empty until a server connection of the
/// pool has logged in; refreshed by every later login and by reported changes of the defaults.
#[derive(Debug, Default)]
pub struct Greeting {
    learned: RwLock<Learned>,
}

#[derive(Debug, Default)]
struct Learned {
    /// ParameterStatus values of a fresh server session, by name.
    defaults: Option<Arc<BTreeMap<String, String>>>,
    /// How the server reported a value a client asked for: name → asked → reported.
    spellings: HashMap<String, HashMap<String, String>>,
    /// Entries in `spellings`.
    spelled: usize,
}

impl Learned {
    fn spelling(&self, name: &str, asked: &str) -> Option<&str> {
        self.spellings.get(name)?.get(asked).map(String::as_str)
    }

    /// What the server reports for `name` asked as `asked`, if known.
    fn reported_for<'s>(&'s self, name: &str, asked: &'s str) -> Option<&'s str> {
        match self.spelling(name, asked) {
            Some(spelled) => Some(spelled),
            None if is_kept_verbatim(name, asked) => Some(asked),
            None => None,
        }
    }

    fn forget_spellings(&mut self) {
        self.spellings.clear();
        self.spelled = 0;
    }
}

impl Greeting {
    /// Records the parameters a server connection reported at login. A change (a server
    /// upgrade, an `ALTER SYSTEM` picked up by a new session) replaces them and forgets the
    /// spellings, which may depend on the defaults (`DateStyle` order).
    ///
    /// # Panics
    /// If the lock was poisoned.
    pub fn learn_login(&self, reported: &BTreeMap<String, String>) {
        if self.defaults().as_deref() == Some(reported) {
            return;
        }
        let mut learned = self.learned.write().expect("greeting lock");
        learned.defaults = Some(Arc::new(reported.clone()));
        learned.forget_spellings();
    }

    /// Records a new default for one parameter, reported by a running server session that had
    /// not changed it itself (a configuration reload, a promotion).
    ///
    /// # Panics
    /// If the lock was poisoned.
    pub fn learn_default(&self, name: &str, value: &str) {
        let mut learned = self.learned.write().expect("greeting lock");
        let Some(defaults) = learned.defaults.as_mut() else {
            return;
        };
        if defaults.get(name).map(String::as_str) != Some(value) {
            Arc::make_mut(defaults).insert(name.to_owned(), value.to_owned());
            learned.forget_spellings();
        }
    }

    /// Records that the server reported `reported` after a client asked for `asked`.
    ///
    /// # Panics
    /// If the lock was poisoned.
    pub fn learn_spelling(&self, name: &str, asked: &str, reported: &str) {
        if self
            .learned
            .read()
            .expect("greeting lock")
            .spelling(name, asked)
            .is_some_and(|known| known == reported)
        {
            return;
        }
        let mut learned = self.learned.write().expect("greeting lock");
        if learned.spelled >= SPELLINGS_MAX {
            learned.forget_spellings();
        }
        let previous = learned
            .spellings
            .entry(name.to_owned())
            .or_default()
            .insert(asked.to_owned(), reported.to_owned());
        if previous.is_none() {
            learned.spelled += 1;
        }
    }

    /// Whether `name` is a parameter the server reports (`GUC_REPORT`), as far as known.
    ///
    /// # Panics
    /// If the lock was poisoned.
    #[must_use]
    pub fn is_reported(&self, name: &str) -> bool {
        self.defaults().is_some_and(|d| d.contains_key(name))
    }

    fn defaults(&self) -> Option<Arc<BTreeMap<String, String>>> {
        self.learned.read().expect("greeting lock").defaults.clone()
    }

    /// Passes `put` the ParameterStatus values a server would send a client whose startup
    /// packet asked for `wanted`, in name order, and returns true; or returns false, passing
    /// nothing, when that is not known without asking a server: nothing learned yet, or a
    /// reported setting asked with a value whose spelling the server has not shown.
    ///
    /// # Panics
    /// If the lock was poisoned.
    pub fn greet(
        &self,
        wanted: &BTreeMap<String, String>,
        mut put: impl FnMut(&str, &str),
    ) -> bool {
        let learned = self.learned.read().expect("greeting lock");
        let Some(defaults) = learned.defaults.as_deref() else {
            return false;
        };
        for (name, asked) in wanted {
            if defaults.contains_key(name) && learned.reported_for(name, asked).is_none() {
                return false;
            }
        }
        for (name, default) in defaults {
            match wanted.get(name) {
                Some(asked) => put(name, learned.reported_for(name, asked).unwrap_or(asked)),
                None => put(name, default),
            }
        }
        true
    }

    /// [`Greeting::greet`] collected into a map, for tests.
    #[cfg(test)]
    fn for_client(&self, wanted: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
        let mut reported = BTreeMap::new();
        self.greet(wanted, |name, value| {
            reported.insert(name.to_owned(), value.to_owned());
        })
        .then_some(reported)
    }
}

/// Whether the server reports `asked` for `name` exactly as given: an `application_name` of
/// printable ASCII that fits a name is neither cleaned nor cut.
fn is_kept_verbatim(name: &str, asked: &str) -> bool {
    name == "application_name"
        && asked.len() <= APPLICATION_NAME_MAX
        && asked.bytes().all(|b| (b' '..=b'~').contains(&b))
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

    fn login() -> BTreeMap<String, String> {
        map(&[
            ("application_name", ""),
            ("DateStyle", "ISO, MDY"),
            ("server_version", "15.18"),
        ])
    }

    #[test]
    fn nothing_is_promised_before_a_server_login() {
        let greeting = Greeting::default();
        assert_eq!(greeting.for_client(&BTreeMap::new()), None);
        greeting.learn_login(&login());
        assert_eq!(greeting.for_client(&BTreeMap::new()), Some(login()));
    }

    #[test]
    fn a_clean_application_name_is_echoed_and_other_settings_only_as_the_server_spelled_them() {
        let greeting = Greeting::default();
        greeting.learn_login(&login());
        let app = greeting
            .for_client(&map(&[
                ("application_name", "billing"),
                ("work_mem", "8MB"),
            ]))
            .unwrap();
        assert_eq!(app["application_name"], "billing");
        assert!(!app.contains_key("work_mem"), "not a reported setting");
        assert_eq!(
            greeting.for_client(&map(&[("application_name", "café")])),
            None
        );
        let iso = map(&[("DateStyle", "ISO")]);
        assert_eq!(greeting.for_client(&iso), None);
        greeting.learn_spelling("DateStyle", "ISO", "ISO, MDY");
        assert_eq!(greeting.for_client(&iso).unwrap()["DateStyle"], "ISO, MDY");
    }

    #[test]
    fn a_changed_default_replaces_the_old_one_and_forgets_spellings() {
        let greeting = Greeting::default();
        greeting.learn_login(&login());
        greeting.learn_spelling("DateStyle", "ISO", "ISO, MDY");
        greeting.learn_default("DateStyle", "ISO, DMY");
        let now = greeting.for_client(&BTreeMap::new()).unwrap();
        assert_eq!(now["DateStyle"], "ISO, DMY");
        assert_eq!(greeting.for_client(&map(&[("DateStyle", "ISO")])), None);
        let mut upgraded = login();
        upgraded.insert("server_version".into(), "15.19".into());
        greeting.learn_login(&upgraded);
        assert_eq!(
            greeting.for_client(&BTreeMap::new()).unwrap()["server_version"],
            "15.19"
        );
    }
}
