//! Parsers for the value forms configuration accepts: durations, sizes, ranges, addresses.

use std::net::SocketAddr;
use std::time::Duration;

use super::file::Scalar;
use super::{ConfigError, invalid};

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
