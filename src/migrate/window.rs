//! The maintenance window in which declared blocking migrations may run: `now` (an operator's
//! explicit go), or a daily range of UTC times such as `02:00-04:30` (it may wrap midnight).

use std::time::{SystemTime, UNIX_EPOCH};

/// When blocking steps may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaintenanceWindow {
    /// Right now, whatever the time.
    Now,
    /// Every day between these minutes of the day (UTC), start inclusive, end exclusive.
    Daily {
        /// Minutes after midnight UTC.
        start: u32,
        /// Minutes after midnight UTC.
        end: u32,
    },
}

fn minutes(text: &str) -> Option<u32> {
    let (h, m) = text.trim().split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn clock(minutes: u32) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

impl MaintenanceWindow {
    /// Parses `now` or `HH:MM-HH:MM` (UTC).
    ///
    /// # Errors
    /// A message naming the accepted forms.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("now") {
            return Ok(Self::Now);
        }
        let range = text.trim_end_matches("UTC").trim();
        range
            .split_once('-')
            .and_then(|(a, b)| Some((minutes(a)?, minutes(b)?)))
            .filter(|(a, b)| a != b)
            .map(|(start, end)| Self::Daily { start, end })
            .ok_or_else(|| {
                format!("expected `now` or a daily UTC range like 02:00-04:30, got `{text}`")
            })
    }

    /// Whether the window is open at `at`.
    #[must_use]
    pub fn is_open_at(&self, at: SystemTime) -> bool {
        match *self {
            Self::Now => true,
            Self::Daily { start, end } => {
                let secs = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
                let minute = u32::try_from(secs % 86_400 / 60).unwrap_or(0);
                if start < end {
                    (start..end).contains(&minute)
                } else {
                    minute >= start || minute < end
                }
            }
        }
    }

    /// Whether the window is open now.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.is_open_at(SystemTime::now())
    }
}

impl std::fmt::Display for MaintenanceWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Now => f.write_str("now"),
            Self::Daily { start, end } => write!(f, "{}-{} UTC", clock(*start), clock(*end)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(hour: u64, minute: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(20 * 86_400 + hour * 3600 + minute * 60)
    }

    #[test]
    fn daily_windows_open_and_close_including_across_midnight() {
        let night = MaintenanceWindow::parse("02:00-04:30").unwrap();
        assert!(night.is_open_at(at(2, 0)));
        assert!(night.is_open_at(at(4, 29)));
        assert!(!night.is_open_at(at(4, 30)));
        assert!(!night.is_open_at(at(13, 0)));
        let wrap = MaintenanceWindow::parse("23:00-01:00 UTC").unwrap();
        assert!(wrap.is_open_at(at(23, 30)) && wrap.is_open_at(at(0, 30)));
        assert!(!wrap.is_open_at(at(1, 0)));
        assert_eq!(wrap.to_string(), "23:00-01:00 UTC");
        assert!(MaintenanceWindow::parse("now").unwrap().is_open());
        for bad in ["later", "25:00-01:00", "02:00", "02:00-02:00"] {
            assert!(MaintenanceWindow::parse(bad).is_err(), "{bad}");
        }
    }
}
