//! Cron schedules (the `cron` crate) with time zones.
//!
//! Policies use the familiar 5-field crontab form (`0 */6 * * *`); the
//! `cron` crate wants a seconds field, so one is prepended. `@daily`-style
//! shorthands are accepted too.

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone)]
pub struct Schedule {
    pub expr: String,
    inner: cron::Schedule,
    pub tz: Tz,
}

impl Schedule {
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<Schedule, String> {
        let tz: Tz = match tz {
            None => Tz::UTC,
            Some(name) => {
                name.parse().map_err(|_| format!("unknown time zone {name:?} (use an IANA name like Europe/Berlin)"))?
            }
        };
        let fields = expr.split_whitespace().count();
        let full = match fields {
            5 => format!("0 {expr}"),
            1 if expr.starts_with('@') => expr.to_string(),
            6 | 7 => expr.to_string(),
            _ => {
                return Err(format!(
                    "schedule {expr:?} is not a cron expression (5 fields: minute hour day month weekday)"
                ));
            }
        };
        let inner = cron::Schedule::from_str(&full).map_err(|e| format!("schedule {expr:?}: {e}"))?;
        Ok(Schedule { expr: expr.to_string(), inner, tz })
    }

    /// The next run strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.inner.after(&t.with_timezone(&self.tz)).next().map(|d| d.with_timezone(&Utc))
    }

    /// Runs in `(from, to]`.
    pub fn runs_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        self.inner
            .after(&from.with_timezone(&self.tz))
            .map(|d| d.with_timezone(&Utc))
            .take_while(|d| *d <= to)
            .collect()
    }

    /// The longest gap between consecutive runs over the coming year: the
    /// best RPO this schedule alone can promise.
    pub fn max_interval(&self, from: DateTime<Utc>) -> chrono::Duration {
        let runs: Vec<DateTime<Utc>> =
            self.inner.after(&from.with_timezone(&self.tz)).take(2000).map(|d| d.with_timezone(&Utc)).collect();
        runs.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_else(|| chrono::Duration::days(365))
    }
}

/// Parse `15m`, `6h`, `7d`, `1h30m` into a duration.
pub fn parse_duration(s: &str) -> Result<chrono::Duration, String> {
    let d =
        humantime::parse_duration(s.trim()).map_err(|e| format!("{s:?} is not a duration like 15m, 6h or 7d: {e}"))?;
    chrono::Duration::from_std(d).map_err(|e| e.to_string())
}

/// `6h`, `15m`, `2d 3h` for messages.
pub fn fmt_duration(d: chrono::Duration) -> String {
    let secs = d.num_seconds().max(0) as u64;
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_fields_and_intervals() {
        let s = Schedule::parse("0 */6 * * *", None).unwrap();
        let t0 = "2026-11-21T01:00:00Z".parse().unwrap();
        assert_eq!(s.next_after(t0).unwrap().to_rfc3339(), "2026-11-21T06:00:00+00:00");
        assert_eq!(s.max_interval(t0), chrono::Duration::hours(6));
        let d = Schedule::parse("0 2 * * *", Some("Europe/Berlin")).unwrap();
        assert_eq!(d.next_after(t0).unwrap().to_rfc3339(), "2026-11-22T01:00:00+00:00");
        assert!(Schedule::parse("every 6 hours", None).is_err());
        assert!(Schedule::parse("0 2 * * *", Some("Mars/Olympus")).is_err());
        assert_eq!(parse_duration("15m").unwrap(), chrono::Duration::minutes(15));
        assert_eq!(parse_duration("7d").unwrap(), chrono::Duration::days(7));
    }
}
