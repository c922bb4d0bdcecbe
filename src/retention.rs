//! Retention: which snapshots to keep and which to forget.
//!
//! This module is pure: it reads no repository and deletes nothing. Given
//! the snapshots of a job, a set of [`RetentionRules`] and the current time,
//! [`plan`] returns one [`Decision`] per snapshot saying whether to keep it
//! and naming every rule that keeps it. `lifeboat forget` / `lifeboat run`
//! print the plan and act on it.
//!
//! # Rules
//!
//! In a policy file the rules are a TOML inline table:
//!
//! ```toml
//! retention = { within = "7d", daily = 7, weekly = 4 }
//! ```
//!
//! | key | keeps |
//! |---|---|
//! | `keep-last = N` (or `keep_last`) | the N newest snapshots |
//! | `within = "7d"` | every snapshot taken at or after `now - 7d` |
//! | `hourly = N` | the newest snapshot of each of the N newest hours that have one |
//! | `daily = N` | … of each of the N newest calendar days |
//! | `weekly = N` | … of each of the N newest ISO-8601 weeks (Monday to Sunday) |
//! | `monthly = N` | … of each of the N newest calendar months |
//! | `yearly = N` | … of each of the N newest calendar years |
//!
//! Durations use [`humantime`]: `"15m"`, `"72h"`, `"7d"`, `"2w"`, `"1h 30m"`.
//! Buckets (hour, day, week, month, year) are computed in UTC. As in restic,
//! the bucket rules walk the snapshots newest first and keep the first
//! (newest) snapshot seen in each bucket until N buckets have been kept;
//! buckets with no snapshot do not count. A snapshot is kept if **any** rule
//! keeps it.
//!
//! # Safety
//!
//! * A rule set that keeps nothing (no rule, or only zero counts) is rejected
//!   when the rules are parsed or [validated](RetentionRules::validate). If
//!   such a rule set reaches [`plan`] anyway (it was built in code), every
//!   snapshot is kept.
//! * The newest snapshot is always kept (reason `"newest"`), whatever the
//!   rules say.
//! * A snapshot dated after `now` is kept (reason `"newer than now (clock
//!   skew?)"`) and does not use up a `keep-last` slot or a bucket, so a
//!   skewed clock cannot push a correctly dated snapshot out. In that case
//!   the `"newest"` guarantee goes to the newest snapshot that is *not* in
//!   the future (the future-dated ones are kept anyway).
//! * With [`plan_grouped`], a snapshot that no group governs is kept (reason
//!   `"no rule applies"`): nothing is deleted by default.
//!
//! Note that `within` counts back from `now`, not from the newest snapshot.
//! If backups stop and retention keeps running, `within` alone would
//! eventually leave only the newest snapshot; combine it with `keep-last` or
//! `daily` where that matters.
//!
//! # Reasons
//!
//! Each kept snapshot lists every rule that keeps it, in this order:
//! `"newer than now (clock skew?)"`, `"newest"`, `"last #2"`, `"within 7d"`,
//! `"hourly #1"`, `"daily #3"`, `"weekly #1"`, `"monthly #2"`, `"yearly #1"`
//! (the number is the snapshot's position among those the rule keeps,
//! newest = #1), or `"no rule applies"` / `"rules keep nothing (kept for
//! safety)"`. A snapshot to forget has no reasons.

use std::fmt;

use chrono::{DateTime, Datelike, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Reason given to the newest snapshot, which is always kept.
pub const REASON_NEWEST: &str = "newest";
/// Reason given to a snapshot dated after `now`.
pub const REASON_FUTURE: &str = "newer than now (clock skew?)";
/// Reason given (by [`plan_grouped`]) to a snapshot that no group governs.
pub const REASON_NO_RULE: &str = "no rule applies";
/// Reason given to every snapshot when a rule set that keeps nothing reaches [`plan`].
pub const REASON_RULES_KEEP_NOTHING: &str = "rules keep nothing (kept for safety)";

/// The names accepted in a policy's `retention` table, for messages.
const RULE_NAMES: &str = "keep-last, within, hourly, daily, weekly, monthly, yearly";

/// What to keep. Parse it from a policy's `retention = { … }` table
/// (deserialising validates it: unknown keys, bad durations and a rule set
/// that keeps nothing are errors), or build it in code and call
/// [`validate`](Self::validate).
///
/// `None` (or a missing key) means the rule is not used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawRules")]
pub struct RetentionRules {
    /// Keep the N newest snapshots (`keep-last` or `keep_last`).
    pub keep_last: Option<u32>,
    /// Keep every snapshot taken at or after `now - within`.
    pub within: Option<chrono::Duration>,
    /// Keep the newest snapshot of each of the N newest hours (UTC).
    pub hourly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest days (UTC).
    pub daily: Option<u32>,
    /// Keep the newest snapshot of each of the N newest ISO weeks (UTC).
    pub weekly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest months (UTC).
    pub monthly: Option<u32>,
    /// Keep the newest snapshot of each of the N newest years (UTC).
    pub yearly: Option<u32>,
}

/// The table as written; [`RetentionRules`] is built from it by `TryFrom`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    #[serde(default, rename = "keep-last", alias = "keep_last")]
    keep_last: Option<u32>,
    #[serde(default)]
    within: Option<String>,
    #[serde(default)]
    hourly: Option<u32>,
    #[serde(default)]
    daily: Option<u32>,
    #[serde(default)]
    weekly: Option<u32>,
    #[serde(default)]
    monthly: Option<u32>,
    #[serde(default)]
    yearly: Option<u32>,
}

impl TryFrom<RawRules> for RetentionRules {
    type Error = Error;

    fn try_from(raw: RawRules) -> Result<Self> {
        let within = raw.within.as_deref().map(parse_within).transpose()?;
        let rules = RetentionRules {
            keep_last: raw.keep_last,
            within,
            hourly: raw.hourly,
            daily: raw.daily,
            weekly: raw.weekly,
            monthly: raw.monthly,
            yearly: raw.yearly,
        };
        rules.validate()?;
        Ok(rules)
    }
}

/// Parses a `within` duration such as `"7d"`, `"72h"` or `"15m"`.
fn parse_within(text: &str) -> Result<chrono::Duration> {
    let std = humantime::parse_duration(text).map_err(|e| {
        Error::Policy(format!(
            "retention: within = {text:?} is not a duration ({e}); write it like \"15m\", \"72h\" or \"7d\""
        ))
    })?;
    chrono::Duration::from_std(std).map_err(|_| Error::Policy(format!("retention: within = {text:?} is too long")))
}

impl RetentionRules {
    /// Parses rules from a policy job's `retention` table.
    pub fn from_table(table: &toml::Table) -> Result<Self> {
        toml::Value::Table(table.clone())
            .try_into()
            .map_err(|e: toml::de::Error| Error::Policy(format!("retention: {}", e.message().trim_end())))
    }

    /// True when no rule can keep any snapshot: every rule is missing or zero.
    pub fn keeps_nothing(&self) -> bool {
        self.counts().iter().all(|(_, n)| n.unwrap_or(0) == 0)
            && self.within.is_none_or(|d| d <= chrono::Duration::zero())
    }

    /// Checks that the rules make sense: at least one rule, no zero counts,
    /// a positive `within`. Parsing already does this.
    pub fn validate(&self) -> Result<()> {
        if self.within.is_none() && self.counts().iter().all(|(_, n)| n.is_none()) {
            return Err(Error::Policy(format!(
                "a retention policy that keeps nothing would delete every snapshot; \
                 give at least one of {RULE_NAMES} (e.g. retention = {{ within = \"7d\" }})"
            )));
        }
        for (name, n) in self.counts() {
            if n == Some(0) {
                return Err(Error::Policy(format!(
                    "retention: {name} = 0 keeps nothing; leave it out or give a number of at least 1"
                )));
            }
        }
        if let Some(d) = self.within
            && d <= chrono::Duration::zero()
        {
            return Err(Error::Policy(format!(
                "retention: within = \"{}\" keeps nothing; give a positive duration such as \"7d\"",
                format_duration(d)
            )));
        }
        Ok(())
    }

    /// The count rules with their policy-file names, in reason order.
    fn counts(&self) -> [(&'static str, Option<u32>); 6] {
        [
            ("keep-last", self.keep_last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
            ("yearly", self.yearly),
        ]
    }
}

impl fmt::Display for RetentionRules {
    /// `keep-last 3, within 7d, daily 7` — for logs and plans.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(n) = self.keep_last {
            parts.push(format!("keep-last {n}"));
        }
        if let Some(d) = self.within {
            parts.push(format!("within {}", format_duration(d)));
        }
        for (name, n) in &self.counts()[1..] {
            if let Some(n) = n {
                parts.push(format!("{name} {n}"));
            }
        }
        if parts.is_empty() { f.write_str("(no rules)") } else { f.write_str(&parts.join(", ")) }
    }
}

/// Formats a duration compactly in days, hours, minutes and seconds:
/// `7d`, `3d` (for 72 h), `1d12h`, `15m`, `0s`.
pub fn format_duration(d: chrono::Duration) -> String {
    let mut secs = d.num_seconds();
    let mut out = String::new();
    if secs < 0 {
        out.push('-');
        secs = -secs;
    }
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if out.is_empty() || out == "-" {
        out = "0s".to_string();
    }
    out
}

/// What retention needs to know about a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub id: String,
    /// When the snapshot was taken (a manifest's `started`).
    pub time: DateTime<Utc>,
    pub tags: Vec<String>,
}

impl From<&crate::repo::Manifest> for SnapshotInfo {
    fn from(m: &crate::repo::Manifest) -> Self {
        SnapshotInfo { id: m.id.clone(), time: m.started, tags: m.tags.clone() }
    }
}

/// The verdict on one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub id: String,
    pub time: DateTime<Utc>,
    pub keep: bool,
    /// Every rule that keeps the snapshot (see the [module docs](self));
    /// empty when it is to be forgotten.
    pub reasons: Vec<String>,
}

/// Maps a time to its bucket (hour, day, ISO week, month or year, in UTC).
type Bucketer = fn(DateTime<Utc>) -> i64;

fn hour_bucket(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(3_600)
}
fn day_bucket(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(86_400)
}
fn week_bucket(t: DateTime<Utc>) -> i64 {
    // ISO week-numbering year: 2024-12-30 is in week 1 of 2025.
    let w = t.iso_week();
    i64::from(w.year()) * 100 + i64::from(w.week())
}
fn month_bucket(t: DateTime<Utc>) -> i64 {
    i64::from(t.year()) * 12 + i64::from(t.month0())
}
fn year_bucket(t: DateTime<Utc>) -> i64 {
    i64::from(t.year())
}

/// Decides which snapshots to keep. `snapshots` may be in any order; the
/// result has one decision per snapshot, newest first (ties broken by id).
/// See the [module docs](self) for the semantics.
pub fn plan(snapshots: &[SnapshotInfo], rules: &RetentionRules, now: DateTime<Utc>) -> Vec<Decision> {
    let mut sorted: Vec<&SnapshotInfo> = snapshots.iter().collect();
    sort_newest_first(&mut sorted);

    let mut decisions: Vec<Decision> =
        sorted.iter().map(|s| Decision { id: s.id.clone(), time: s.time, keep: false, reasons: Vec::new() }).collect();

    if rules.keeps_nothing() {
        for d in &mut decisions {
            keep(d, REASON_RULES_KEEP_NOTHING.to_string());
        }
        return decisions;
    }

    // Future-dated snapshots are kept and take no part in the other rules.
    let mut present = Vec::with_capacity(decisions.len());
    for (i, d) in decisions.iter_mut().enumerate() {
        if d.time > now {
            keep(d, REASON_FUTURE.to_string());
        } else {
            present.push(i);
        }
    }

    if let Some(&first) = present.first() {
        keep(&mut decisions[first], REASON_NEWEST.to_string());
    }

    if let Some(n) = rules.keep_last {
        for (rank, &i) in present.iter().take(n as usize).enumerate() {
            keep(&mut decisions[i], format!("last #{}", rank + 1));
        }
    }

    if let Some(within) = rules.within {
        let label = format!("within {}", format_duration(within));
        let cutoff = now - within;
        for &i in &present {
            if decisions[i].time >= cutoff {
                keep(&mut decisions[i], label.clone());
            }
        }
    }

    let buckets: [(&str, Option<u32>, Bucketer); 5] = [
        ("hourly", rules.hourly, hour_bucket),
        ("daily", rules.daily, day_bucket),
        ("weekly", rules.weekly, week_bucket),
        ("monthly", rules.monthly, month_bucket),
        ("yearly", rules.yearly, year_bucket),
    ];
    for (name, count, bucket_of) in buckets {
        let Some(count) = count else { continue };
        let mut kept = 0u32;
        let mut last_bucket = None;
        for &i in &present {
            if kept >= count {
                break;
            }
            let b = bucket_of(decisions[i].time);
            if last_bucket != Some(b) {
                last_bucket = Some(b);
                kept += 1;
                keep(&mut decisions[i], format!("{name} #{kept}"));
            }
        }
    }

    decisions
}

/// Like [`plan`], with a rule set per tag.
///
/// Each snapshot is governed by the first group (in `groups` order) whose tag
/// it carries; a snapshot that carries none of the groups' tags is governed
/// by the first group whose tag is `None`. Each group is planned on its own
/// snapshots, so each group keeps its own newest snapshot. A snapshot that
/// no group governs is kept with reason `"no rule applies"`.
///
/// The result has one decision per snapshot, newest first (ties by id).
pub fn plan_grouped(
    snapshots: &[SnapshotInfo],
    groups: &[(Option<String>, RetentionRules)],
    now: DateTime<Utc>,
) -> Vec<Decision> {
    let mut members: Vec<Vec<SnapshotInfo>> = vec![Vec::new(); groups.len()];
    let mut decisions = Vec::with_capacity(snapshots.len());
    let default_group = groups.iter().position(|(tag, _)| tag.is_none());

    for s in snapshots {
        let tagged = groups.iter().position(|(tag, _)| tag.as_ref().is_some_and(|t| s.tags.contains(t)));
        match tagged.or(default_group) {
            Some(g) => members[g].push(s.clone()),
            None => decisions.push(Decision {
                id: s.id.clone(),
                time: s.time,
                keep: true,
                reasons: vec![REASON_NO_RULE.to_string()],
            }),
        }
    }
    for (snaps, (_, rules)) in members.iter().zip(groups) {
        if !snaps.is_empty() {
            decisions.extend(plan(snaps, rules, now));
        }
    }
    decisions.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.id.cmp(&b.id)));
    decisions
}

fn sort_newest_first(snaps: &mut [&SnapshotInfo]) {
    snaps.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| a.id.cmp(&b.id)));
}

fn keep(d: &mut Decision, reason: String) {
    d.keep = true;
    d.reasons.push(reason);
}

#[cfg(test)]
mod tests {
    //! The simulated clock: 30 days of 6-hourly snapshots, 2024-12-15 00:00
    //! UTC to 2025-01-13 18:00 UTC (17 days of December, 13 of January),
    //! 120 snapshots at 00:00, 06:00, 12:00 and 18:00. Ids are the times,
    //! `"2025-01-13T18"`, so the expected sets read as dates.
    //!
    //! The span crosses a month, a year and an ISO-year boundary on purpose.
    //! 2024-12-15 is a Sunday; the ISO weeks are 2024-W50 (…Dec 15),
    //! W51 (Dec 16–22), W52 (Dec 23–29), 2025-W01 (Dec 30–Jan 5),
    //! W02 (Jan 6–12), W03 (Jan 13–19). Dec 30 and 31 belong to 2025-W01, so
    //! bucketing weeks by calendar year would wrongly split W01 in two.
    //!
    //! `now` is the newest snapshot's time, 2025-01-13T18:00Z, unless a test
    //! says otherwise (retention runs right after the backup).

    use std::collections::BTreeSet;

    use chrono::{Duration, TimeZone};

    use super::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn id_of(t: DateTime<Utc>) -> String {
        t.format("%Y-%m-%dT%H").to_string()
    }

    fn snap(t: DateTime<Utc>, tags: &[&str]) -> SnapshotInfo {
        SnapshotInfo { id: id_of(t), time: t, tags: tags.iter().map(|s| s.to_string()).collect() }
    }

    /// The 120 six-hourly snapshots, oldest first.
    fn six_hourly() -> Vec<SnapshotInfo> {
        let start = at(2024, 12, 15, 0, 0);
        (0..120).map(|i| snap(start + Duration::hours(6 * i), &[])).collect()
    }

    fn now() -> DateTime<Utc> {
        at(2025, 1, 13, 18, 0)
    }

    fn rules(toml_table: &str) -> RetentionRules {
        parse(toml_table).unwrap_or_else(|e| panic!("{toml_table}: {e}"))
    }

    /// Parses `retention = <toml_table>` the way a policy file would.
    fn parse(toml_table: &str) -> std::result::Result<RetentionRules, String> {
        #[derive(Deserialize)]
        struct Job {
            retention: RetentionRules,
        }
        toml::from_str::<Job>(&format!("retention = {toml_table}")).map(|j| j.retention).map_err(|e| e.to_string())
    }

    fn kept(decisions: &[Decision]) -> BTreeSet<String> {
        decisions.iter().filter(|d| d.keep).map(|d| d.id.clone()).collect()
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    fn reasons<'a>(decisions: &'a [Decision], id: &str) -> &'a [String] {
        &decisions.iter().find(|d| d.id == id).unwrap_or_else(|| panic!("no decision for {id}")).reasons
    }

    /// Every snapshot of `days` (2025-01-DD) at the four times.
    fn jan_days(days: std::ops::RangeInclusive<u32>) -> Vec<String> {
        days.flat_map(|d| [0, 6, 12, 18].map(|h| format!("2025-01-{d:02}T{h:02}"))).collect()
    }

    fn check_invariants(snaps: &[SnapshotInfo], decisions: &[Decision]) {
        assert_eq!(decisions.len(), snaps.len(), "one decision per snapshot");
        assert!(decisions.windows(2).all(|w| w[0].time >= w[1].time), "newest first");
        for d in decisions {
            assert_eq!(d.keep, !d.reasons.is_empty(), "{}: keep iff it has reasons", d.id);
        }
    }

    #[test]
    fn within_7d_keeps_29() {
        // now = 2025-01-13T18:00, cutoff = now - 7d = 2025-01-06T18:00, and
        // `within` is inclusive (a snapshot exactly 7 days old is still within
        // 7 days). Kept: 2025-01-06T18 plus all four of Jan 7..=13 (7 × 4 =
        // 28) = 29. The next test moves `now` one second on: 28.
        let snaps = six_hourly();
        let d = plan(&snaps, &rules(r#"{ within = "7d" }"#), now());
        check_invariants(&snaps, &d);
        let mut want = jan_days(7..=13);
        want.push("2025-01-06T18".into());
        let want: BTreeSet<String> = want.into_iter().collect();
        assert_eq!(want.len(), 29);
        assert_eq!(kept(&d), want);
        assert_eq!(reasons(&d, "2025-01-06T18"), ["within 7d"]);
        assert_eq!(reasons(&d, "2025-01-13T18"), ["newest", "within 7d"]);
        assert!(reasons(&d, "2025-01-06T12").is_empty());
    }

    #[test]
    fn within_7d_one_second_later_keeps_28() {
        // cutoff = 2025-01-06T18:00:01: the snapshot of 2025-01-06T18:00 is
        // now 7 days and one second old and goes.
        let snaps = six_hourly();
        let d = plan(&snaps, &rules(r#"{ within = "7d" }"#), now() + Duration::seconds(1));
        check_invariants(&snaps, &d);
        assert_eq!(kept(&d), jan_days(7..=13).into_iter().collect());
        assert_eq!(kept(&d).len(), 28);
    }

    #[test]
    fn daily_7() {
        // The newest (18:00) snapshot of each of the 7 newest days.
        let snaps = six_hourly();
        let d = plan(&snaps, &rules("{ daily = 7 }"), now());
        check_invariants(&snaps, &d);
        let want = set(&[
            "2025-01-13T18",
            "2025-01-12T18",
            "2025-01-11T18",
            "2025-01-10T18",
            "2025-01-09T18",
            "2025-01-08T18",
            "2025-01-07T18",
        ]);
        assert_eq!(kept(&d), want);
        assert_eq!(reasons(&d, "2025-01-13T18"), ["newest", "daily #1"]);
        assert_eq!(reasons(&d, "2025-01-11T18"), ["daily #3"]);
    }

    #[test]
    fn weekly_4_uses_iso_weeks() {
        // W03 (Mon Jan 13) → Jan 13 18:00; W02 (Jan 6–12) → Sun Jan 12 18:00;
        // 2025-W01 (Dec 30–Jan 5) → Sun Jan 5 18:00; 2024-W52 → Sun Dec 29
        // 18:00. Bucketing by calendar year would keep Dec 31 instead of
        // Dec 29.
        let snaps = six_hourly();
        let d = plan(&snaps, &rules("{ weekly = 4 }"), now());
        check_invariants(&snaps, &d);
        assert_eq!(kept(&d), set(&["2025-01-13T18", "2025-01-12T18", "2025-01-05T18", "2024-12-29T18"]));
        assert_eq!(reasons(&d, "2024-12-29T18"), ["weekly #4"]);
    }

    #[test]
    fn monthly_2() {
        let snaps = six_hourly();
        let d = plan(&snaps, &rules("{ monthly = 2 }"), now());
        check_invariants(&snaps, &d);
        assert_eq!(kept(&d), set(&["2025-01-13T18", "2024-12-31T18"]));
        assert_eq!(reasons(&d, "2024-12-31T18"), ["monthly #2"]);
    }

    #[test]
    fn yearly_more_buckets_than_exist_keeps_one_per_bucket() {
        // Only two years have snapshots; asking for 5 keeps both, no more.
        let snaps = six_hourly();
        let d = plan(&snaps, &rules("{ yearly = 5 }"), now());
        check_invariants(&snaps, &d);
        assert_eq!(kept(&d), set(&["2025-01-13T18", "2024-12-31T18"]));
    }

    #[test]
    fn keep_last_3() {
        let snaps = six_hourly();
        let d = plan(&snaps, &rules("{ keep-last = 3 }"), now());
        check_invariants(&snaps, &d);
        assert_eq!(kept(&d), set(&["2025-01-13T18", "2025-01-13T12", "2025-01-13T06"]));
        assert_eq!(reasons(&d, "2025-01-13T18"), ["newest", "last #1"]);
        assert_eq!(reasons(&d, "2025-01-13T06"), ["last #3"]);
        // The underscore spelling means the same.
        assert_eq!(rules("{ keep_last = 3 }"), rules("{ keep-last = 3 }"));
    }

    #[test]
    fn hourly_5() {
        // Every snapshot is in an hour of its own: the 5 newest.
        let snaps = six_hourly();
        let d = plan(&snaps, &rules("{ hourly = 5 }"), now());
        check_invariants(&snaps, &d);
        assert_eq!(
            kept(&d),
            set(&["2025-01-13T18", "2025-01-13T12", "2025-01-13T06", "2025-01-13T00", "2025-01-12T18"])
        );
    }

    #[test]
    fn hourly_keeps_newest_of_each_hour() {
        // Three snapshots in the 10:00 hour: only 10:50 counts for it.
        let snaps: Vec<SnapshotInfo> = [(9, 30), (10, 5), (10, 20), (10, 50), (11, 0)]
            .iter()
            .map(|&(h, m)| {
                let t = at(2025, 1, 13, h, m);
                SnapshotInfo { id: t.format("%H:%M").to_string(), time: t, tags: vec![] }
            })
            .collect();
        let d = plan(&snaps, &rules("{ hourly = 2 }"), at(2025, 1, 13, 12, 0));
        check_invariants(&snaps, &d);
        assert_eq!(kept(&d), set(&["11:00", "10:50"]));
    }

    #[test]
    fn cluster_state_within_72h() {
        // 6-hourly: cutoff = 2025-01-10T18:00 (inclusive): 1 + 3 days × 4 = 13.
        let snaps = six_hourly();
        let d = plan(&snaps, &rules(r#"{ within = "72h" }"#), now());
        check_invariants(&snaps, &d);
        let mut want = jan_days(11..=13);
        want.push("2025-01-10T18".into());
        assert_eq!(kept(&d), want.into_iter().collect());
        assert_eq!(kept(&d).len(), 13);
        // 72h is shown as 3d.
        assert_eq!(reasons(&d, "2025-01-10T18"), ["within 3d"]);

        // The brief's Kubernetes job: daily at 02:00, kept 72 h. Retention runs
        // after the backup, a few minutes past 02:00, so the snapshot of three
        // days ago is 72 h and a few minutes old: 3 snapshots survive (at
        // exactly 02:00:00 it would be 4, the boundary being inclusive).
        let daily: Vec<SnapshotInfo> = (0..30).map(|i| snap(at(2024, 12, 15, 2, 0) + Duration::days(i), &[])).collect();
        let run_at = at(2025, 1, 13, 2, 5);
        let d = plan(&daily, &rules(r#"{ within = "72h" }"#), run_at);
        check_invariants(&daily, &d);
        assert_eq!(kept(&d), set(&["2025-01-13T02", "2025-01-12T02", "2025-01-11T02"]));
        let d = plan(&daily, &rules(r#"{ within = "72h" }"#), at(2025, 1, 13, 2, 0));
        assert_eq!(kept(&d), set(&["2025-01-13T02", "2025-01-12T02", "2025-01-11T02", "2025-01-10T02"]));
    }

    #[test]
    fn combined_rules_keep_the_union() {
        // within 72h: 13 (Jan 10 18:00 … Jan 13 18:00);
        // daily 7 adds Jan 7, 8, 9 at 18:00 (Jan 10–13 18:00 already kept);
        // weekly 4 adds Jan 5 18:00 and Dec 29 18:00; monthly 2 adds
        // Dec 31 18:00. 13 + 3 + 2 + 1 = 19.
        let snaps = six_hourly();
        let r = rules(r#"{ within = "72h", daily = 7, weekly = 4, monthly = 2 }"#);
        let d = plan(&snaps, &r, now());
        check_invariants(&snaps, &d);
        let mut want = jan_days(11..=13);
        want.extend(
            [
                "2025-01-10T18",
                "2025-01-09T18",
                "2025-01-08T18",
                "2025-01-07T18",
                "2025-01-05T18",
                "2024-12-31T18",
                "2024-12-29T18",
            ]
            .map(String::from),
        );
        assert_eq!(kept(&d), want.into_iter().collect());
        assert_eq!(kept(&d).len(), 19);
        assert_eq!(reasons(&d, "2025-01-13T18"), ["newest", "within 3d", "daily #1", "weekly #1", "monthly #1"]);
        assert_eq!(reasons(&d, "2025-01-12T18"), ["within 3d", "daily #2", "weekly #2"]);
        assert_eq!(reasons(&d, "2024-12-31T18"), ["monthly #2"]);
        assert_eq!(r.to_string(), "within 3d, daily 7, weekly 4, monthly 2");
    }

    /// The automated 6-hourly series plus manual snapshots sprinkled in.
    fn with_manual() -> Vec<SnapshotInfo> {
        let mut snaps = six_hourly();
        for (t, tags) in [
            (at(2024, 12, 13, 12, 0), &["manual"][..]), // 31 days 6 h old: goes
            (at(2024, 12, 14, 18, 0), &["manual"][..]), // exactly 30 days: kept
            (at(2024, 12, 16, 9, 30), &["manual", "pre-upgrade"][..]),
            (at(2024, 12, 24, 15, 0), &["manual"][..]),
            (at(2025, 1, 2, 10, 0), &["manual"][..]),
            (at(2025, 1, 9, 20, 0), &["manual"][..]),
            (at(2025, 1, 1, 3, 0), &["pre-upgrade"][..]), // not manual: automated rules
        ] {
            let mut s = snap(t, tags);
            s.id = format!("{}{}", id_of(t), if tags.contains(&"manual") { "-manual" } else { "-other" });
            snaps.push(s);
        }
        snaps
    }

    #[test]
    fn tagged_groups_manual_30d_automated_7d() {
        let snaps = with_manual();
        let groups =
            vec![(Some("manual".to_string()), rules(r#"{ within = "30d" }"#)), (None, rules(r#"{ within = "7d" }"#))];
        let d = plan_grouped(&snaps, &groups, now());
        check_invariants(&snaps, &d);
        // Manual: cutoff 2024-12-14T18:00 (inclusive): all but the 13 Dec one.
        // Automated (incl. the untagged-by-"manual" pre-upgrade one of Jan 1,
        // which is 12 days old and goes): the same 29 as within_7d_keeps_29.
        let mut want = jan_days(7..=13);
        want.push("2025-01-06T18".into());
        want.extend(
            [
                "2024-12-14T18-manual",
                "2024-12-16T09-manual",
                "2024-12-24T15-manual",
                "2025-01-02T10-manual",
                "2025-01-09T20-manual",
            ]
            .map(String::from),
        );
        let want: BTreeSet<String> = want.into_iter().collect();
        assert_eq!(want.len(), 34);
        assert_eq!(kept(&d), want);
        assert!(reasons(&d, "2024-12-13T12-manual").is_empty());
        assert!(reasons(&d, "2025-01-01T03-other").is_empty());
        assert_eq!(reasons(&d, "2025-01-02T10-manual"), ["within 30d"]);
        // Each group keeps its own newest.
        assert_eq!(reasons(&d, "2025-01-09T20-manual"), ["newest", "within 30d"]);
        assert_eq!(reasons(&d, "2025-01-09T18"), ["within 7d"]);
    }

    #[test]
    fn grouped_first_matching_group_wins_and_unmatched_are_kept() {
        let snaps = with_manual();
        // No `None` group: untagged snapshots are governed by nothing.
        // "pre-upgrade" comes first, so the Dec 16 snapshot tagged both
        // "manual" and "pre-upgrade" is governed by keep-last 1 of that
        // group, where the Jan 1 snapshot is newer: it goes.
        let groups = vec![
            (Some("pre-upgrade".to_string()), rules("{ keep-last = 1 }")),
            (Some("manual".to_string()), rules("{ keep-last = 2 }")),
        ];
        let d = plan_grouped(&snaps, &groups, now());
        check_invariants(&snaps, &d);
        let forgotten: BTreeSet<String> = d.iter().filter(|d| !d.keep).map(|d| d.id.clone()).collect();
        assert_eq!(
            forgotten,
            set(&["2024-12-16T09-manual", "2024-12-24T15-manual", "2024-12-14T18-manual", "2024-12-13T12-manual"])
        );
        assert_eq!(reasons(&d, "2025-01-01T03-other"), ["newest", "last #1"]);
        assert_eq!(reasons(&d, "2025-01-09T20-manual"), ["newest", "last #1"]);
        assert_eq!(reasons(&d, "2025-01-02T10-manual"), ["last #2"]);
        assert_eq!(reasons(&d, "2024-12-15T00"), [REASON_NO_RULE]);
        assert_eq!(d.iter().filter(|d| d.reasons == [REASON_NO_RULE]).count(), 120);
    }

    #[test]
    fn grouped_with_no_groups_keeps_everything() {
        let snaps = six_hourly();
        let d = plan_grouped(&snaps, &[], now());
        check_invariants(&snaps, &d);
        assert!(d.iter().all(|d| d.keep && d.reasons == [REASON_NO_RULE]));
    }

    #[test]
    fn empty_rules_are_rejected() {
        let err = parse("{}").unwrap_err();
        assert!(err.contains("a retention policy that keeps nothing would delete every snapshot"), "{err}");
        let err = RetentionRules::default().validate().unwrap_err().to_string();
        assert!(err.contains("would delete every snapshot"), "{err}");
        let err = RetentionRules::from_table(&toml::Table::new()).unwrap_err().to_string();
        assert!(err.contains("would delete every snapshot"), "{err}");
        // Zero counts and zero durations keep nothing either.
        let err = parse("{ daily = 0 }").unwrap_err();
        assert!(err.contains("daily = 0 keeps nothing"), "{err}");
        let err = parse(r#"{ within = "0s" }"#).unwrap_err();
        assert!(err.contains("keeps nothing"), "{err}");
        // Built in code and planned anyway: everything is kept.
        let snaps = six_hourly();
        let d = plan(&snaps, &RetentionRules { daily: Some(0), ..Default::default() }, now());
        check_invariants(&snaps, &d);
        assert!(d.iter().all(|d| d.keep && d.reasons == [REASON_RULES_KEEP_NOTHING]));
    }

    #[test]
    fn bad_tables_are_rejected_clearly() {
        let err = parse("{ dayly = 7 }").unwrap_err();
        assert!(err.contains("unknown field `dayly`") && err.contains("daily"), "{err}");
        let err = parse(r#"{ within = "7 parsecs" }"#).unwrap_err();
        assert!(err.contains("within = \"7 parsecs\" is not a duration"), "{err}");
        let err = parse("{ keep-last = 2, keep_last = 3 }").unwrap_err();
        assert!(err.contains("duplicate field"), "{err}");
        let err = parse("{ daily = -1 }").unwrap_err();
        assert!(err.contains("-1"), "{err}");
    }

    #[test]
    fn durations_parse() {
        for (text, want) in [
            ("72h", Duration::hours(72)),
            ("7d", Duration::days(7)),
            ("30d", Duration::days(30)),
            ("15m", Duration::minutes(15)),
            ("1h 30m", Duration::minutes(90)),
        ] {
            assert_eq!(rules(&format!("{{ within = {text:?} }}")).within, Some(want), "{text}");
        }
        assert_eq!(format_duration(Duration::minutes(90)), "1h30m");
        assert_eq!(format_duration(Duration::days(30)), "30d");
    }

    #[test]
    fn newest_is_always_kept() {
        // Every snapshot is older than `within`: only the newest survives.
        let snaps = six_hourly();
        let later = now() + Duration::days(365);
        let d = plan(&snaps, &rules(r#"{ within = "1h" }"#), later);
        check_invariants(&snaps, &d);
        assert_eq!(kept(&d), set(&["2025-01-13T18"]));
        assert_eq!(reasons(&d, "2025-01-13T18"), [REASON_NEWEST]);
        // A single snapshot, however old.
        let one = vec![snap(at(2020, 1, 1, 0, 0), &[])];
        let d = plan(&one, &rules(r#"{ within = "1d" }"#), now());
        assert_eq!(kept(&d), set(&["2020-01-01T00"]));
        // Nothing in, nothing out.
        assert!(plan(&[], &rules("{ daily = 1 }"), now()).is_empty());
    }

    #[test]
    fn future_snapshots_are_kept_and_use_no_slot() {
        let mut snaps = six_hourly();
        snaps.push(snap(now() + Duration::hours(5), &[])); // 2025-01-13T23
        snaps.push(snap(now() + Duration::days(400), &[])); // 2026-02-17T18
        let d = plan(&snaps, &rules("{ keep-last = 2 }"), now());
        check_invariants(&snaps, &d);
        assert_eq!(d[0].id, "2026-02-17T18");
        assert_eq!(kept(&d), set(&["2026-02-17T18", "2025-01-13T23", "2025-01-13T18", "2025-01-13T12"]));
        assert_eq!(reasons(&d, "2026-02-17T18"), [REASON_FUTURE]);
        assert_eq!(reasons(&d, "2025-01-13T23"), [REASON_FUTURE]);
        // "newest" goes to the newest snapshot that is not in the future.
        assert_eq!(reasons(&d, "2025-01-13T18"), ["newest", "last #1"]);

        // With `within` only, a skewed snapshot does not stop the newest
        // correctly dated one (two days later, 2025-01-13T23 is no longer in
        // the future) from being kept.
        let d = plan(&snaps, &rules(r#"{ within = "1h" }"#), now() + Duration::days(2));
        assert_eq!(kept(&d), set(&["2026-02-17T18", "2025-01-13T23"]));
        assert_eq!(reasons(&d, "2025-01-13T23"), [REASON_NEWEST]);
    }

    #[test]
    fn unsorted_input_gives_the_same_plan() {
        let sorted = six_hourly();
        // A deterministic shuffle: interleave from both ends, then rotate.
        let mut shuffled = Vec::new();
        let (mut lo, mut hi) = (0, sorted.len() - 1);
        while lo <= hi {
            shuffled.push(sorted[hi].clone());
            if lo != hi {
                shuffled.push(sorted[lo].clone());
            }
            lo += 1;
            hi -= 1;
        }
        shuffled.rotate_left(37);
        assert_ne!(shuffled, sorted);
        let r = rules(r#"{ within = "72h", daily = 7, weekly = 4, monthly = 2, keep-last = 3, hourly = 5 }"#);
        let a = plan(&sorted, &r, now());
        let b = plan(&shuffled, &r, now());
        check_invariants(&shuffled, &b);
        assert_eq!(a, b);
        assert_eq!(b[0].id, "2025-01-13T18");
        assert_eq!(b[119].id, "2024-12-15T00");
        // Grouped planning sorts its merged output too.
        let g = plan_grouped(&shuffled, &[(None, r)], now());
        assert_eq!(g, a);
    }
}
