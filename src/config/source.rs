//! Where a running proxy's configuration comes from, kept so that a reload (SIGHUP, the console's
//! `RELOAD`, `POST /v1/reload`) reads the same file again with the same start-up overrides.

use std::path::PathBuf;

use super::{Config, ConfigError, Overrides};

/// The configuration file and the flags and environment captured at start. On reload the file
/// is read again and the overrides apply on top of it as they did at start, so a key set by a
/// flag or an environment variable keeps that value whatever the file now says.
#[derive(Debug, Default, Clone)]
pub struct ConfigSource {
    /// The TOML file, if the proxy was started with one.
    pub path: Option<PathBuf>,
    /// Flags and environment variables, captured once at start.
    pub overrides: Overrides,
}

impl ConfigSource {
    /// Reads and validates the configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file or key at fault.
    pub fn load(&self) -> Result<Config, ConfigError> {
        Config::load(self.path.as_deref(), &self.overrides)
    }

    /// The keys a reload could change but which a flag or an environment variable fixed at start:
    /// the file's values for them do not apply, and a reload says so instead of ignoring them
    /// quietly.
    #[must_use]
    pub fn pinned_keys(&self) -> Vec<&'static str> {
        self.overrides.reloadable_keys_set()
    }
}
