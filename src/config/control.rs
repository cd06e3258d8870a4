//! The control plane's keys: who may change traffic (the admin API's bearer token, the role
//! whose fleet requests sidecars obey) and how far a pause may go (caps on holds and
//! deadlines). They live apart from the data path's keys because they are the security
//! boundary an operator reviews.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::values::Scalar;
use super::values::field;
use super::{ConfigError, FleetConfig, invalid, parse_duration};

/// Shortest admin token accepted: anything shorter is guessable over a network.
const MIN_TOKEN_LEN: usize = 16;

/// The bearer token the admin API's mutating endpoints require. Only its SHA-256 is kept, and
/// presented tokens are compared in constant time, so neither memory dumps of the config nor
/// response timing reveal it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    /// A token from its text (surrounding whitespace, such as a file's final newline, ignored).
    ///
    /// # Errors
    /// A message when the token is too short to be a secret.
    pub fn new(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() < MIN_TOKEN_LEN {
            return Err(format!(
                "the admin token must be at least {MIN_TOKEN_LEN} characters (got {})",
                text.len()
            ));
        }
        Ok(Self {
            digest: Sha256::digest(text.as_bytes()).into(),
        })
    }

    /// Whether `presented` is the token.
    #[must_use]
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.digest).into()
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(***)")
    }
}

/// Who may change traffic through the control plane, and within which bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlSettings {
    /// Required by `POST /v1/gate/*`; without one those endpoints refuse every request.
    pub admin_token: Option<AdminToken>,
    /// The longest `max_hold` any pause request (HTTP, console, fleet) may ask for.
    pub max_pause_hold: Duration,
    /// The longest pause or drain deadline any request may ask for.
    pub max_pause_deadline: Duration,
}

/// The raw control-plane values, from the file and overrides.
pub(super) struct ControlFile<'a> {
    pub admin_token_file: Option<&'a Scalar>,
    /// The token itself, from `PGSIDECAR_ADMIN_TOKEN` (never a flag: argv is public).
    pub admin_token: Option<&'a str>,
    pub max_pause_hold: Option<&'a Scalar>,
    pub max_pause_deadline: Option<&'a Scalar>,
}

impl ControlFile<'_> {
    pub(super) fn validate(&self) -> Result<ControlSettings, ConfigError> {
        let admin_token = match (self.admin_token_file.map(Scalar::text), self.admin_token) {
            (Some(path), _) if !path.is_empty() => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| invalid("admin_token_file", format!("cannot read {path}: {e}")))?;
                Some(AdminToken::new(&text).map_err(|m| invalid("admin_token_file", m))?)
            }
            (_, Some(token)) if !token.is_empty() => {
                Some(AdminToken::new(token).map_err(|m| invalid("PGSIDECAR_ADMIN_TOKEN", m))?)
            }
            _ => None,
        };
        let positive = |key: &str, value: Option<&Scalar>, default: Duration| {
            let d = field(key, value, default, parse_duration)?;
            if d.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
            Ok(d)
        };
        Ok(ControlSettings {
            admin_token,
            max_pause_hold: positive(
                "max_pause_hold",
                self.max_pause_hold,
                Duration::from_secs(300),
            )?,
            max_pause_deadline: positive(
                "max_pause_deadline",
                self.max_pause_deadline,
                Duration::from_secs(120),
            )?,
        })
    }
}

/// The raw fleet values, from the file and overrides.
pub(super) struct FleetFile<'a> {
    pub url: Option<&'a Scalar>,
    pub id: Option<&'a Scalar>,
    pub heartbeat: Option<&'a Scalar>,
    pub health_interval: Option<&'a Scalar>,
    pub control_role: Option<&'a Scalar>,
}

/// The machine's name, for the fleet registry.
fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

fn non_empty(value: Option<&Scalar>) -> Option<String> {
    value
        .map(Scalar::text)
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
}

impl FleetFile<'_> {
    pub(super) fn validate(&self) -> Result<Option<FleetConfig>, ConfigError> {
        let Some(url) = non_empty(self.url) else {
            return Ok(None);
        };
        tokio_postgres::Config::from_str(&url).map_err(|e| invalid("fleet_url", e.to_string()))?;
        let heartbeat = field(
            "fleet_heartbeat",
            self.heartbeat,
            Duration::from_secs(2),
            parse_duration,
        )?;
        if heartbeat.is_zero() {
            return Err(invalid("fleet_heartbeat", "must be greater than zero"));
        }
        let control_role = non_empty(self.control_role);
        if let Some(role) = &control_role
            && (role.len() > 63 || role.contains('\0'))
        {
            return Err(invalid(
                "fleet_control_role",
                "expected a PostgreSQL role name (at most 63 bytes)",
            ));
        }
        let host = hostname();
        Ok(Some(FleetConfig {
            url,
            // host-pid: unique per process, readable in the registry.
            id: non_empty(self.id).unwrap_or_else(|| format!("{host}-{}", std::process::id())),
            host,
            heartbeat,
            health_interval: field(
                "health_interval",
                self.health_interval,
                Duration::from_secs(30),
                parse_duration,
            )?,
            control_role,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_matches_itself_only() {
        let token = AdminToken::new("correct horse battery staple\n").unwrap();
        assert!(token.matches("correct horse battery staple"));
        assert!(!token.matches("correct horse battery stapl"));
        assert!(!token.matches(""));
        assert_eq!(format!("{token:?}"), "AdminToken(***)");
    }

    #[test]
    fn a_short_token_is_refused() {
        assert!(AdminToken::new("  short  ").unwrap_err().contains("16"));
    }

    #[test]
    fn caps_must_be_positive_and_name_their_key() {
        let zero = Scalar::Str("0s".into());
        let err = ControlFile {
            admin_token_file: None,
            admin_token: None,
            max_pause_hold: Some(&zero),
            max_pause_deadline: None,
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("`max_pause_hold`"), "{err}");
    }

    #[test]
    fn an_unreadable_token_file_names_the_key() {
        let path = Scalar::Str("/nonexistent/token".into());
        let err = ControlFile {
            admin_token_file: Some(&path),
            admin_token: None,
            max_pause_hold: None,
            max_pause_deadline: None,
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("`admin_token_file`"), "{err}");
    }
}
