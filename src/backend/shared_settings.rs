//! One shared copy of each distinct set of startup settings a pool's clients sent. Clients of
//! one application send the same settings (`application_name`, `DateStyle`, ...); each then keeps
//! a pointer to one map instead of a map of its own (~600 bytes for a single setting), and a
//! server connection brought to those settings matches the next client by pointer.

use std::sync::{Arc, Mutex};

use super::params::Settings;

/// Distinct sets kept at most: beyond that, a client keeps its own copy (an application that
/// sends a unique setting per connection should not grow this list).
const MOST_SETS: usize = 32;

/// The distinct startup settings seen so far, shared on request.
#[derive(Debug, Default)]
pub struct SharedSettings {
    known: Mutex<Vec<Settings>>,
}

impl SharedSettings {
    /// The shared copy of `settings`: an equal set seen before, or `settings` itself, kept for
    /// the next client while there is room.
    ///
    /// # Panics
    /// If the lock was poisoned.
    pub fn share(&self, settings: Settings) -> Settings {
        let mut known = self.known.lock().expect("shared settings lock");
        if let Some(equal) = known.iter().find(|k| **k == settings) {
            return Arc::clone(equal);
        }
        if known.len() < MOST_SETS {
            known.push(Arc::clone(&settings));
        }
        settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(application_name: &str) -> Settings {
        Arc::new(
            [("application_name".to_owned(), application_name.to_owned())]
                .into_iter()
                .collect(),
        )
    }

    #[test]
    fn equal_settings_are_one_copy_and_different_ones_stay_apart() {
        let shared = SharedSettings::default();
        let first = shared.share(settings("app"));
        let second = shared.share(settings("app"));
        assert!(Arc::ptr_eq(&first, &second));
        let other = shared.share(settings("other"));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(*other, *settings("other"));
    }

    #[test]
    fn beyond_the_limit_a_client_keeps_its_own_copy() {
        let shared = SharedSettings::default();
        for n in 0..MOST_SETS {
            shared.share(settings(&format!("app-{n}")));
        }
        let late = shared.share(settings("late"));
        let again = shared.share(settings("late"));
        assert!(!Arc::ptr_eq(&late, &again), "not remembered");
        assert_eq!(*late, *again);
    }
}
