//! Parsers for the value forms configuration accepts: durations, sizes, ranges, addresses.

use std::net::SocketAddr;
use std::time::Duration;

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, SeqAccess, Visitor};

use super::{ConfigError, invalid};

/// A TOML scalar, so that `pool_size = 20`, `sampler_arg = 0.05` and `PGSIDECAR_POOL_SIZE=20`
/// take one validation path: numbers and booleans are kept as their text, and the key's own
/// parser says what is wrong with the value, naming the key.
#[derive(Debug, Clone)]
pub(super) enum Scalar {
    Int(i64),
    Str(String),
}

impl Scalar {
    pub(super) fn text(&self) -> String {
        match self {
            Self::Int(i) => i.to_string(),
            Self::Str(s) => s.clone(),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a number or a boolean")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar::Str(v))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// User names, as a TOML list or as one comma-separated string (the form the environment
/// variable takes), so that both spellings work in the file.
#[derive(Debug, Clone, Default)]
pub(super) struct UserList(Vec<String>);

impl UserList {
    pub(super) fn from_text(text: &str) -> Self {
        Self(
            text.split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    pub(super) fn into_names(self) -> Vec<String> {
        self.0
    }
}

impl<'de> Deserialize<'de> for UserList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = UserList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of user names, or one comma-separated string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<UserList, E> {
                Ok(UserList::from_text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UserList, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(UserList(names))
            }
        }
        deserializer.deserialize_any(ListVisitor)
    }
}

pub(super) fn field<T>(
    key: &str,
    value: Option<&Scalar>,
    default: T,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<T, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) => parse(&v.text()).map_err(|m| invalid(key, m)),
    }
}

pub(super) fn ranged(min: usize, max: usize) -> impl Fn(&str) -> Result<usize, String> {
    move |s| {
        let n: usize = s
            .trim()
            .parse()
            .map_err(|_| format!("expected a whole number, got `{s}`"))?;
        if (min..=max).contains(&n) {
            Ok(n)
        } else {
            Err(format!("must be between {min} and {max}, got {n}"))
        }
    }
}

pub(super) fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("expected an address like 127.0.0.1:6432, got `{s}`"))
}

/// A timeout key: a duration, `0` for off.
pub(super) fn optional_duration(text: &str) -> Result<Option<Duration>, String> {
    parse_duration(text).map(|d| (!d.is_zero()).then_some(d))
}

/// Parses `250ms`, `5s`, `10m`, `1h` or a bare number of seconds.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("expected a duration like 500ms, 5s, 10m or 1h, got `{s}`"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit `{other}` in `{s}` (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{s}`: {e}"))
}

/// Parses a byte size: a number with an optional `B`, `kB`/`KiB`, `MB`/`MiB` suffix.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| format!("expected a size like 1048576 or 64MiB, got `{s}`"))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KiB" | "KB" => 1024,
        "MB" | "MiB" => 1024 * 1024,
        other => return Err(format!("unknown size unit `{other}` (use B, KiB or MiB)")),
    };
    value
        .checked_mul(factor)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// Parses a `schema_version`: the number of the migration whose schema the application expects,
/// as `7`, `0007`, `v0007` or `app_v0007` (so that an image tag or a schema name can be given
/// as it is).
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_schema_version(s: &str) -> Result<i64, String> {
    let digits = s
        .trim()
        .trim_start_matches("app_")
        .trim_start_matches(['v', 'V']);
    digits
        .parse::<i64>()
        .ok()
        .filter(|v| *v >= 0 && !digits.starts_with('+'))
        .ok_or_else(|| {
            format!("expected a migration number like 7, 0007, v0007 or app_v0007, got `{s}`")
        })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_schema_version_reads_as_a_number_a_tag_or_a_schema_name() {
        for text in ["7", "0007", "v0007", "V7", "app_v0007"] {
            assert_eq!(parse_schema_version(text), Ok(7), "{text}");
        }
        for bad in ["", "v", "latest", "-1", "+7", "7.1"] {
            assert!(parse_schema_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert!(parse_size("12XB").is_err());
    }
}
