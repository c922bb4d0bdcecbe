//! The monthly DR drill report (`lifeboat report`).
//!
//! Everything comes from the records a repository keeps (`records/<kind>/`,
//! see docs/FORMAT.md) plus the policy's targets and a listing of each
//! repository's objects: [`gather`] collects them, [`build`] turns them into
//! a [`ReportData`] (pure, so the arithmetic is unit-tested), and the
//! renderers write HTML, Markdown or JSON (docs/REPORT.md describes the JSON).

mod html;
mod markdown;
mod svg;

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use serde::{Deserialize, Serialize};

pub use self::html::render_html;
pub use self::markdown::render_markdown;
use crate::crypto::Identities;
use crate::error::Result;
use crate::policy::{JobKind, Policy, RepositorySpec};
use crate::repo::{Keys, Repository};

/// Version of the JSON document; bumped when a field changes meaning or goes away.
pub const REPORT_FORMAT: &str = "lifeboat-report/1";

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{input:?} is not a month; use YYYY-MM, e.g. --month 2026-10")]
    BadMonth { input: String },
    #[error("{month} has not started yet (now is {now}); report on a month up to {current}")]
    FutureMonth { month: String, now: String, current: String },
    #[error("the policy has no repository named {name:?} (repositories: {names})")]
    UnknownRepository { name: String, names: String },
    #[error("unknown report format {0:?}; use html, md or json")]
    BadFormat(String),
}

/// A calendar month in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl FromStr for Month {
    type Err = ReportError;
    fn from_str(s: &str) -> std::result::Result<Month, ReportError> {
        let bad = || ReportError::BadMonth { input: s.to_string() };
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 || !y.chars().chain(m.chars()).all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        let (year, month) = (y.parse::<i32>().map_err(|_| bad())?, m.parse::<u32>().map_err(|_| bad())?);
        if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Month { year, month })
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl Month {
    pub fn of(t: DateTime<Utc>) -> Month {
        Month { year: t.year(), month: t.month() }
    }
    /// First instant of the month.
    pub fn start(&self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.year, self.month, 1, 0, 0, 0).single().unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
    /// First instant of the next month (the end, exclusive).
    pub fn end(&self) -> DateTime<Utc> {
        let (y, m) = if self.month == 12 { (self.year + 1, 1) } else { (self.year, self.month + 1) };
        Month { year: y, month: m }.start()
    }
    /// "October 2026".
    pub fn title(&self) -> String {
        self.start().format("%B %Y").to_string()
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Html,
    Markdown,
    Json,
}

impl FromStr for Format {
    type Err = ReportError;
    fn from_str(s: &str) -> std::result::Result<Format, ReportError> {
        match s {
            "html" => Ok(Format::Html),
            "md" | "markdown" => Ok(Format::Markdown),
            "json" => Ok(Format::Json),
            other => Err(ReportError::BadFormat(other.to_string())),
        }
    }
}

/// Render in one of the formats.
pub fn render(data: &ReportData, format: Format) -> Result<String> {
    Ok(match format {
        Format::Html => render_html(data),
        Format::Markdown => render_markdown(data),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(data).map_err(|e| crate::Error::Other(e.to_string()))?;
            s.push('\n');
            s
        }
    })
}

// ---------------------------------------------------------------------------
// The report document (serialised as the JSON format: field names are stable).

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every measured target met, nothing failed.
    Pass,
    /// Targets met, but something needs a look (failed backup runs, undrilled targets, an unreachable replica).
    Warn,
    /// A target missed, a drill or a verification failed.
    Fail,
    /// No records at all for the month.
    NoData,
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Warn => "PASS WITH WARNINGS",
            Verdict::Fail => "FAIL",
            Verdict::NoData => "NO DATA",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportData {
    pub format: String,
    /// `YYYY-MM`.
    pub month: String,
    pub title: String,
    pub period_start: DateTime<Utc>,
    /// The month's end, or "now" while the month is still running.
    pub period_end: DateTime<Utc>,
    pub month_complete: bool,
    pub generated_at: DateTime<Utc>,
    /// Generated under `LIFEBOAT_CLOCK` (a rehearsal, not the real calendar).
    pub simulated_clock: bool,
    /// The repository the records were read from.
    pub records_from: RepoRef,
    pub verdict: Verdict,
    /// Why the verdict is not PASS, most serious first.
    pub reasons: Vec<String>,
    pub summary: Summary,
    pub jobs: Vec<JobReport>,
    pub verifications: Vec<VerificationRow>,
    pub drills: Vec<DrillRow>,
    pub storage: Vec<StorageRow>,
    pub replication: Vec<ReplicationRow>,
    /// Records that could not be understood (skipped, counted here).
    pub unreadable_records: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RepoRef {
    pub name: String,
    pub region: String,
    pub primary: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    pub backups_ok: u64,
    pub backups_failed: u64,
    pub verifications_passed: u64,
    pub verifications_failed: u64,
    pub drills_passed: u64,
    pub drills_failed: u64,
    pub jobs_total: u64,
    pub jobs_with_rpo_target: u64,
    pub jobs_meeting_rpo: u64,
    /// Jobs with an RTO measured by a drill this month.
    pub jobs_with_rto_measured: u64,
    pub jobs_meeting_rto: u64,
    pub max_replication_lag_secs: Option<f64>,
}

/// A stretch of time without a new recoverable point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub secs: i64,
    /// `from` is the month start: there was no recoverable point before it.
    pub from_period_start: bool,
    /// `to` is the period end (no point after it yet).
    pub to_period_end: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub time: DateTime<Utc>,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobReport {
    pub job: String,
    pub kind: Option<String>,
    pub tier: Option<String>,
    /// False for a job that has records but is no longer in the policy.
    pub in_policy: bool,
    pub backups_ok: u64,
    pub backups_failed: u64,
    pub failures: Vec<Failure>,
    /// Successful backups' snapshot times within the period.
    pub backup_points: Vec<DateTime<Utc>>,
    /// Archived WAL files counted as recoverable points within the period (PostgreSQL with wal_archiving).
    pub wal_points: u64,
    /// A recoverable point existed before the period started.
    pub recoverable_at_start: bool,
    /// The first recoverable point within the period.
    pub first_point: Option<DateTime<Utc>>,
    /// The newest recoverable point at the end of the period.
    pub newest_point: Option<DateTime<Utc>>,
    pub rpo_target_secs: Option<i64>,
    /// The largest gap between recoverable points over the period (see [`gaps`]).
    pub achieved_rpo_secs: i64,
    pub worst_gap: Option<Gap>,
    pub gaps_over_target: Vec<Gap>,
    pub rpo_ok: Option<bool>,
    pub verifications_passed: u64,
    pub verifications_failed: u64,
    pub rto_target_secs: Option<i64>,
    pub drills: u64,
    /// The slowest recovery measured by a drill this month.
    pub drill_rto_secs: Option<f64>,
    /// The largest data loss measured by a drill this month.
    pub drill_rpo_secs: Option<f64>,
    pub rto_ok: Option<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerificationRow {
    pub job: String,
    pub kind: Option<String>,
    pub time: DateTime<Utc>,
    pub snapshot: Option<String>,
    pub snapshot_time: Option<DateTime<Utc>>,
    pub repository: Option<String>,
    pub region: Option<String>,
    pub ok: bool,
    pub restore_secs: Option<f64>,
    pub verify_secs: Option<f64>,
    pub total_secs: Option<f64>,
    pub checks: u64,
    pub failed_checks: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillRow {
    pub scenario: String,
    pub kind: Option<String>,
    pub runbook: Option<String>,
    pub incident: Option<DateTime<Utc>>,
    pub finished: DateTime<Utc>,
    pub repository: Option<String>,
    pub region: Option<String>,
    pub ok: bool,
    pub simulated_clock: bool,
    pub jobs: Vec<DrillJobRecord>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StorageRow {
    pub repository: String,
    pub region: String,
    pub primary: bool,
    pub reachable: bool,
    pub error: Option<String>,
    /// All of packs/, index/, snapshots/ and wal/.
    pub stored_bytes: u64,
    pub packs_bytes: u64,
    pub index_bytes: u64,
    pub snapshots_bytes: u64,
    pub wal_bytes: u64,
    pub snapshots: u64,
    /// Sum of the snapshots' sizes before dedup and compression.
    pub logical_bytes: u64,
    /// logical_bytes / (packs + index + snapshots): what dedup and compression save (WAL is not deduplicated).
    pub dedup_ratio: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplicationRow {
    pub replica: String,
    pub region: String,
    pub runs: u64,
    pub objects_copied: u64,
    pub bytes_copied: u64,
    pub max_lag_secs: f64,
    pub last_lag_secs: Option<f64>,
    pub last_time: Option<DateTime<Utc>>,
}

// ---------------------------------------------------------------------------
// Records as written by `run`, `replicate`, `verify` and `drill`. Lenient:
// missing fields default, unknown ones are ignored.

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct BackupRecord {
    pub job: String,
    pub time: Option<DateTime<Utc>>,
    pub ok: bool,
    pub snapshot: Option<String>,
    pub snapshot_time: Option<DateTime<Utc>>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ReplicationRecord {
    pub time: Option<DateTime<Utc>>,
    pub replica: String,
    pub region: String,
    pub report: ReplicationRecordReport,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ReplicationRecordReport {
    pub objects_copied: u64,
    pub bytes_copied: u64,
    pub lag_before_secs: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct CheckRecord {
    pub name: String,
    pub ok: bool,
    pub detail: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VerificationRecord {
    pub job: String,
    pub kind: Option<String>,
    pub time: Option<DateTime<Utc>>,
    pub snapshot: Option<String>,
    pub snapshot_time: Option<DateTime<Utc>>,
    pub repository: Option<String>,
    pub region: Option<String>,
    pub ok: bool,
    pub restore_secs: Option<f64>,
    pub verify_secs: Option<f64>,
    pub total_secs: Option<f64>,
    pub checks: Vec<CheckRecord>,
    pub error: Option<String>,
}

/// A job's line of a drill record, read leniently (older records may lack fields) and
/// reported as is, with the RTO target and verdict filled in from the policy when missing.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DrillJobRecord {
    pub job: String,
    pub tier: Option<String>,
    pub snapshot: Option<String>,
    pub recoverable_point: Option<DateTime<Utc>>,
    pub rto_target_secs: Option<f64>,
    pub rto_secs: Option<f64>,
    pub rto_ok: Option<bool>,
    pub rpo_target_secs: Option<f64>,
    pub rpo_secs: Option<f64>,
    pub rpo_ok: Option<bool>,
    pub verified: Option<bool>,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DrillRecord {
    pub scenario: String,
    pub kind: Option<String>,
    pub runbook: Option<String>,
    pub incident: Option<DateTime<Utc>>,
    pub finished: Option<DateTime<Utc>>,
    pub repository: Option<String>,
    pub region: Option<String>,
    pub ok: bool,
    pub simulated_clock: bool,
    pub jobs: Vec<DrillJobRecord>,
}

/// Everything [`build`] needs besides the policy.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub backups: Vec<BackupRecord>,
    pub replications: Vec<ReplicationRecord>,
    pub verifications: Vec<VerificationRecord>,
    pub drills: Vec<DrillRecord>,
    /// Archived WAL push times per job (PostgreSQL jobs with wal_archiving).
    pub wal: BTreeMap<String, Vec<DateTime<Utc>>>,
    pub storage: Vec<StorageRow>,
    pub unreadable_records: u64,
}

// ---------------------------------------------------------------------------
// The arithmetic.

/// Seconds between two instants, rounded to the nearest second (records
/// carry sub-second times; a 3-day gap should read 259200, not 259199).
fn secs_between(a: DateTime<Utc>, b: DateTime<Utc>) -> i64 {
    let ms = (b - a).num_milliseconds();
    (ms + if ms >= 0 { 500 } else { -500 }) / 1000
}

/// Every gap between consecutive recoverable points over `[start, end)`:
/// from the last point before `start` (or `start` itself when there is
/// none) to the first point in the period, between points, and from the
/// last point to `end`. `points` need not be sorted; points at or after
/// `end` are ignored. The achieved RPO is the largest `secs`.
pub fn gaps(points: &[DateTime<Utc>], start: DateTime<Utc>, end: DateTime<Utc>) -> Vec<Gap> {
    let mut sorted: Vec<DateTime<Utc>> = points.iter().copied().filter(|p| *p < end).collect();
    sorted.sort();
    sorted.dedup();
    let before = sorted.iter().rev().find(|p| **p < start).copied();
    let mut prev = before.unwrap_or(start);
    let mut from_start = before.is_none();
    let mut out = Vec::new();
    for p in sorted.into_iter().filter(|p| *p >= start) {
        if p > prev || from_start {
            out.push(Gap {
                from: prev,
                to: p,
                secs: secs_between(prev, p),
                from_period_start: from_start,
                to_period_end: false,
            });
        }
        prev = p;
        from_start = false;
    }
    if end > prev {
        out.push(Gap {
            from: prev,
            to: end,
            secs: secs_between(prev, end),
            from_period_start: from_start,
            to_period_end: true,
        });
    }
    out
}

/// The largest gap (the first of equals).
pub fn worst_gap(gaps: &[Gap]) -> Option<&Gap> {
    gaps.iter().fold(None, |best: Option<&Gap>, g| match best {
        Some(b) if b.secs >= g.secs => Some(b),
        _ => Some(g),
    })
}

fn parse_secs(s: Option<&str>) -> Option<i64> {
    s.and_then(|s| crate::schedule::parse_duration(s).ok()).map(|d| d.num_seconds())
}

fn in_period(t: Option<DateTime<Utc>>, start: DateTime<Utc>, end: DateTime<Utc>) -> Option<DateTime<Utc>> {
    t.filter(|t| *t >= start && *t < end)
}

fn max_f(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Context of a report: which month, when, from where.
#[derive(Debug, Clone)]
pub struct Context {
    pub month: Month,
    pub now: DateTime<Utc>,
    pub simulated_clock: bool,
    pub records_from: RepoRef,
}

/// The report from the records (pure: no I/O).
pub fn build(ctx: &Context, policy: &Policy, inputs: &Inputs) -> std::result::Result<ReportData, ReportError> {
    let start = ctx.month.start();
    if ctx.now < start {
        return Err(ReportError::FutureMonth {
            month: ctx.month.to_string(),
            now: ctx.now.format("%Y-%m-%d %H:%M UTC").to_string(),
            current: Month::of(ctx.now).to_string(),
        });
    }
    let end = ctx.month.end().min(ctx.now);

    // Jobs: the policy's, then any that only the records know (removed since).
    let mut names: Vec<String> = policy.jobs.iter().map(|j| j.name.clone()).collect();
    for b in &inputs.backups {
        if !b.job.is_empty() && !names.contains(&b.job) && in_period(b.time, start, end).is_some() {
            names.push(b.job.clone());
        }
    }

    let verifications: Vec<VerificationRow> = inputs
        .verifications
        .iter()
        .filter_map(|v| {
            let time = in_period(v.time, start, end)?;
            Some(VerificationRow {
                job: v.job.clone(),
                kind: v.kind.clone(),
                time,
                snapshot: v.snapshot.clone(),
                snapshot_time: v.snapshot_time,
                repository: v.repository.clone(),
                region: v.region.clone(),
                ok: v.ok,
                restore_secs: v.restore_secs,
                verify_secs: v.verify_secs,
                total_secs: v.total_secs,
                checks: v.checks.len() as u64,
                failed_checks: v.checks.iter().filter(|c| !c.ok).map(|c| c.name.clone()).collect(),
                error: v.error.clone(),
            })
        })
        .collect();

    let mut verifications = verifications;
    verifications.sort_by_key(|v| v.time);
    let drills: Vec<DrillRow> = inputs
        .drills
        .iter()
        .filter_map(|d| {
            let finished = in_period(d.finished.or(d.incident), start, end)?;
            Some(DrillRow {
                scenario: d.scenario.clone(),
                kind: d.kind.clone(),
                runbook: d.runbook.clone(),
                incident: d.incident,
                finished,
                repository: d.repository.clone(),
                region: d.region.clone(),
                ok: d.ok,
                simulated_clock: d.simulated_clock,
                jobs: d
                    .jobs
                    .iter()
                    .map(|j| {
                        let target = j.rto_target_secs.or_else(|| {
                            policy
                                .jobs
                                .iter()
                                .find(|p| p.name == j.job)
                                .and_then(|p| parse_secs(p.rto.as_deref()))
                                .map(|s| s as f64)
                        });
                        DrillJobRecord {
                            rto_target_secs: target,
                            rto_ok: j.rto_ok.or_else(|| Some(j.rto_secs? <= target?)),
                            ..j.clone()
                        }
                    })
                    .collect(),
            })
        })
        .collect();

    let mut drills = drills;
    drills.sort_by_key(|d| d.finished);
    let mut jobs = Vec::new();
    for name in &names {
        let spec = policy.jobs.iter().find(|j| &j.name == name);
        let mine: Vec<&BackupRecord> = inputs.backups.iter().filter(|b| &b.job == name).collect();
        let in_month: Vec<&&BackupRecord> = mine.iter().filter(|b| in_period(b.time, start, end).is_some()).collect();
        let mut failures: Vec<Failure> = in_month
            .iter()
            .filter(|b| !b.ok)
            .filter_map(|b| Some(Failure { time: b.time?, error: b.error.clone().unwrap_or_default() }))
            .collect();
        failures.sort_by_key(|f| f.time);
        // Recoverable points: successful snapshots, whenever they were taken.
        let snaps: Vec<DateTime<Utc>> =
            mine.iter().filter(|b| b.ok).filter_map(|b| b.snapshot_time.or(b.time)).collect();
        let mut points = snaps.clone();
        let mut wal_points = 0;
        if let (Some(s), Some(wal)) = (spec, inputs.wal.get(name)) {
            // WAL replays only on top of a base backup: count what was archived after the first one.
            if s.kind == JobKind::Postgres
                && s.wal_archiving
                && let Some(base) = snaps.iter().min()
            {
                let after: Vec<DateTime<Utc>> = wal.iter().copied().filter(|t| t >= base).collect();
                wal_points = after.iter().filter(|t| **t >= start && **t < end).count() as u64;
                points.extend(after);
            }
        }
        // A job first run this month is measured from its first run (ok or failed), not
        // from the month start: before it there was nothing to protect.
        let first_run = mine.iter().filter_map(|b| b.time).min();
        let since = match first_run {
            Some(t) if t > start => t,
            _ => start,
        };
        let all_gaps = gaps(&points, since, end);
        let worst = worst_gap(&all_gaps).cloned();
        let rpo_target = spec.and_then(|s| parse_secs(s.rpo.as_deref()));
        let rto_target = spec.and_then(|s| parse_secs(s.rto.as_deref()));
        let mut backup_points: Vec<DateTime<Utc>> = snaps.iter().copied().filter(|t| *t >= start && *t < end).collect();
        backup_points.sort();
        let achieved = worst.as_ref().map(|g| g.secs).unwrap_or(0);
        let (mut drill_rto, mut drill_rpo, mut n_drills, mut rto_all_ok) = (None, None, 0, true);
        for d in &drills {
            for j in d.jobs.iter().filter(|j| &j.job == name) {
                n_drills += 1;
                drill_rto = max_f(drill_rto, j.rto_secs);
                drill_rpo = max_f(drill_rpo, j.rpo_secs);
                // A drill that could not restore the job did not meet its RTO, whatever it measured;
                // one that restored in time but lost too much data failed on RPO, not RTO.
                if j.rto_ok == Some(false) || j.rto_secs.is_none() || j.verified == Some(false) {
                    rto_all_ok = false;
                }
            }
        }
        jobs.push(JobReport {
            job: name.clone(),
            kind: spec.map(|s| s.kind.as_str().to_string()),
            tier: spec.and_then(|s| s.tier.clone()),
            in_policy: spec.is_some(),
            backups_ok: in_month.iter().filter(|b| b.ok).count() as u64,
            backups_failed: failures.len() as u64,
            failures,
            backup_points,
            wal_points,
            recoverable_at_start: points.iter().any(|p| *p < start),
            first_point: points.iter().copied().filter(|p| *p >= start && *p < end).min(),
            newest_point: points.iter().copied().filter(|p| *p < end).max(),
            rpo_target_secs: rpo_target,
            achieved_rpo_secs: achieved,
            gaps_over_target: match rpo_target {
                Some(t) => all_gaps.iter().filter(|g| g.secs > t).cloned().collect(),
                None => vec![],
            },
            worst_gap: worst,
            rpo_ok: rpo_target.map(|t| achieved <= t),
            verifications_passed: verifications.iter().filter(|v| &v.job == name && v.ok).count() as u64,
            verifications_failed: verifications.iter().filter(|v| &v.job == name && !v.ok).count() as u64,
            rto_target_secs: rto_target,
            drills: n_drills,
            drill_rto_secs: drill_rto,
            drill_rpo_secs: drill_rpo,
            rto_ok: if n_drills > 0 { Some(rto_all_ok) } else { None },
        });
    }

    // Replication, per replica.
    let mut replication: Vec<ReplicationRow> = Vec::new();
    let mut reps: Vec<&ReplicationRecord> =
        inputs.replications.iter().filter(|r| in_period(r.time, start, end).is_some()).collect();
    reps.sort_by_key(|r| r.time);
    for r in reps {
        let row = match replication.iter_mut().position(|x| x.replica == r.replica) {
            Some(i) => &mut replication[i],
            None => {
                replication.push(ReplicationRow {
                    replica: r.replica.clone(),
                    region: r.region.clone(),
                    ..Default::default()
                });
                let last = replication.len() - 1;
                &mut replication[last]
            }
        };
        row.runs += 1;
        row.objects_copied += r.report.objects_copied;
        row.bytes_copied += r.report.bytes_copied;
        row.max_lag_secs = row.max_lag_secs.max(r.report.lag_before_secs);
        row.last_lag_secs = Some(r.report.lag_before_secs);
        row.last_time = r.time;
    }

    let summary = Summary {
        backups_ok: jobs.iter().map(|j| j.backups_ok).sum(),
        backups_failed: jobs.iter().map(|j| j.backups_failed).sum(),
        verifications_passed: verifications.iter().filter(|v| v.ok).count() as u64,
        verifications_failed: verifications.iter().filter(|v| !v.ok).count() as u64,
        drills_passed: drills.iter().filter(|d| d.ok).count() as u64,
        drills_failed: drills.iter().filter(|d| !d.ok).count() as u64,
        jobs_total: jobs.len() as u64,
        jobs_with_rpo_target: jobs.iter().filter(|j| j.rpo_ok.is_some()).count() as u64,
        jobs_meeting_rpo: jobs.iter().filter(|j| j.rpo_ok == Some(true)).count() as u64,
        jobs_with_rto_measured: jobs.iter().filter(|j| j.rto_ok.is_some()).count() as u64,
        jobs_meeting_rto: jobs.iter().filter(|j| j.rto_ok == Some(true)).count() as u64,
        max_replication_lag_secs: replication.iter().map(|r| r.max_lag_secs).reduce(f64::max),
    };

    let (verdict, reasons) = verdict(&summary, &jobs, &verifications, &drills, &inputs.storage, ctx.month);
    Ok(ReportData {
        format: REPORT_FORMAT.into(),
        month: ctx.month.to_string(),
        title: ctx.month.title(),
        period_start: start,
        period_end: end,
        month_complete: ctx.now >= ctx.month.end(),
        generated_at: ctx.now,
        simulated_clock: ctx.simulated_clock,
        records_from: ctx.records_from.clone(),
        verdict,
        reasons,
        summary,
        jobs,
        verifications,
        drills,
        storage: inputs.storage.clone(),
        replication,
        unreadable_records: inputs.unreadable_records,
    })
}

fn verdict(
    s: &Summary,
    jobs: &[JobReport],
    verifications: &[VerificationRow],
    drills: &[DrillRow],
    storage: &[StorageRow],
    month: Month,
) -> (Verdict, Vec<String>) {
    if s.backups_ok
        + s.backups_failed
        + s.verifications_passed
        + s.verifications_failed
        + s.drills_passed
        + s.drills_failed
        == 0
    {
        return (
            Verdict::NoData,
            vec![format!(
                "No records for {}: no backup, verification or drill ran (or they were recorded in another repository)",
                month.title()
            )],
        );
    }
    let (mut fail, mut warn) = (Vec::new(), Vec::new());
    for j in jobs {
        if j.rpo_ok == Some(false) {
            let g = j.worst_gap.as_ref();
            fail.push(format!(
                "{}: RPO target {} missed — the worst gap between recoverable points was {}{}",
                j.job,
                fmt_secs(j.rpo_target_secs.unwrap_or(0)),
                fmt_secs(j.achieved_rpo_secs),
                g.map(|g| format!(" ({} → {})", g.from.format("%b %-d %H:%M"), g.to.format("%b %-d %H:%M")))
                    .unwrap_or_default()
            ));
        }
        if j.rto_ok == Some(false) {
            fail.push(format!(
                "{}: RTO target {} missed in a drill (slowest recovery {})",
                j.job,
                j.rto_target_secs.map(fmt_secs).unwrap_or_else(|| "-".into()),
                j.drill_rto_secs.map(fmt_secs_f).unwrap_or_else(|| "did not finish".into())
            ));
        }
    }
    for d in drills.iter().filter(|d| !d.ok) {
        let why: Vec<String> = d
            .jobs
            .iter()
            .filter(|j| !j.ok)
            .map(|j| match (j.rpo_ok, j.rto_ok) {
                (Some(false), _) => format!(
                    "{} would have lost {} of data (RPO target {})",
                    j.job,
                    j.rpo_secs.map(fmt_secs_f).unwrap_or_default(),
                    j.rpo_target_secs.map(fmt_secs_f).unwrap_or_default()
                ),
                (_, Some(false)) => format!(
                    "{} took {} to recover (RTO target {})",
                    j.job,
                    j.rto_secs.map(fmt_secs_f).unwrap_or_default(),
                    j.rto_target_secs.map(fmt_secs_f).unwrap_or_default()
                ),
                _ => format!(
                    "{}: {}",
                    j.job,
                    j.error.as_deref().unwrap_or("not restored").chars().take(160).collect::<String>()
                ),
            })
            .collect();
        fail.push(format!(
            "drill {} on {} failed{}",
            d.scenario,
            d.finished.format("%b %-d"),
            if why.is_empty() { String::new() } else { format!(": {}", why.join("; ")) }
        ));
    }
    for v in verifications.iter().filter(|v| !v.ok) {
        fail.push(format!("{}: restore verification on {} failed", v.job, v.time.format("%b %-d")));
    }
    for j in jobs.iter().filter(|j| j.backups_failed > 0) {
        warn.push(format!("{}: {} backup run(s) failed", j.job, j.backups_failed));
    }
    for j in jobs.iter().filter(|j| j.in_policy && j.rto_target_secs.is_some() && j.drills == 0) {
        warn.push(format!("{}: has an RTO target but no drill measured it this month", j.job));
    }
    for r in storage.iter().filter(|r| !r.reachable) {
        warn.push(format!("repository {} ({}) was unreachable when the report was made", r.repository, r.region));
    }
    if !fail.is_empty() {
        fail.extend(warn);
        (Verdict::Fail, fail)
    } else if !warn.is_empty() {
        (Verdict::Warn, warn)
    } else {
        (Verdict::Pass, vec![])
    }
}

// ---------------------------------------------------------------------------
// Gathering the inputs (I/O).

/// Open the repository the records come from (the primary, or `name`),
/// read the month's records, WAL times and storage figures, and build the report.
pub async fn gather(
    policy: &Policy,
    repository: Option<&str>,
    identities: Identities,
    month: Month,
    now: DateTime<Utc>,
) -> Result<ReportData> {
    if now < month.start() {
        return Err(ReportError::FutureMonth {
            month: month.to_string(),
            now: now.format("%Y-%m-%d %H:%M UTC").to_string(),
            current: Month::of(now).to_string(),
        }
        .into());
    }
    let names = || policy.repositories.iter().map(|r| r.name.as_str()).collect::<Vec<_>>().join(", ");
    let spec: &RepositorySpec = match repository {
        Some(n) => policy
            .repositories
            .iter()
            .find(|r| r.name == n)
            .ok_or_else(|| ReportError::UnknownRepository { name: n.to_string(), names: names() })?,
        None => policy
            .repositories
            .first()
            .ok_or_else(|| crate::Error::Policy(format!("{}: no [[repository]]", policy.path.display())))?,
    };
    let repo = Repository::open(&spec.repo_url()?).await?;
    let keys = repo.unlock_identity(identities).await?;
    let (start, end) = (month.start(), month.end().min(now));
    let mut inputs = Inputs::default();
    let mut bad = 0;
    // Backups: all of them (the RPO needs the last point before the month); the rest: the month's.
    inputs.backups = parse_all(load_records(&repo, &keys, "backup", None).await?, &mut bad);
    let window = Some((start, end));
    inputs.replications = parse_all(load_records(&repo, &keys, "replication", window).await?, &mut bad);
    inputs.verifications = parse_all(load_records(&repo, &keys, "verification", window).await?, &mut bad);
    inputs.drills = parse_all(load_records(&repo, &keys, "drill", window).await?, &mut bad);
    inputs.unreadable_records = bad;
    for job in policy.jobs.iter().filter(|j| j.kind == JobKind::Postgres && j.wal_archiving) {
        let wal = crate::source::wal::list(&repo, &job.name).await?;
        inputs.wal.insert(job.name.clone(), wal.into_iter().map(|h| h.pushed_at).collect());
    }
    for (i, r) in policy.repositories.iter().enumerate() {
        let row = if r.name == spec.name {
            storage_of(&repo, &keys).await
        } else {
            match r.repo_url() {
                Ok(url) => match Repository::open(&url).await {
                    Ok(other) if other.config.id != repo.config.id => Err(crate::Error::Other(format!(
                        "holds another repository ({}), not a copy of {}",
                        other.config.id, repo.config.id
                    ))),
                    Ok(other) => storage_of(&other, &keys).await,
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            }
        };
        let mut row = row.unwrap_or_else(|e| StorageRow { error: Some(e.to_string()), ..Default::default() });
        row.repository = r.name.clone();
        row.region = r.region();
        row.primary = i == 0;
        inputs.storage.push(row);
    }
    let ctx = Context {
        month,
        now,
        simulated_clock: crate::clock::simulated(),
        records_from: RepoRef {
            name: spec.name.clone(),
            region: spec.region(),
            primary: policy.repositories.first().is_some_and(|p| p.name == spec.name),
        },
    };
    Ok(build(&ctx, policy, &inputs)?)
}

fn parse_all<T: serde::de::DeserializeOwned>(values: Vec<serde_json::Value>, bad: &mut u64) -> Vec<T> {
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        match serde_json::from_value(v) {
            Ok(r) => out.push(r),
            Err(e) => {
                tracing::warn!("skipping a record the report cannot read: {e}");
                *bad += 1;
            }
        }
    }
    out
}

/// Records of one kind, decrypted 16 at a time. With a window, only those
/// whose key (stamped with the write time) falls within a day of it: a
/// year of records should not all be downloaded for one month.
async fn load_records(
    repo: &Repository,
    keys: &Keys,
    kind: &str,
    window: Option<(DateTime<Utc>, DateTime<Utc>)>,
) -> Result<Vec<serde_json::Value>> {
    let ids = keys.identities("reading records")?;
    let prefix = format!("records/{kind}/");
    let bounds = window.map(|(a, b)| {
        let fmt = |t: DateTime<Utc>| t.format("%Y%m%dT%H%M%S").to_string();
        (fmt(a - chrono::Duration::days(1)), fmt(b + chrono::Duration::days(1)))
    });
    let mut objs: Vec<String> = repo
        .backend
        .list(&prefix)
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| match &bounds {
            Some((lo, hi)) => k.strip_prefix(&prefix).is_some_and(|name| name >= lo.as_str() && name < hi.as_str()),
            None => true,
        })
        .collect();
    objs.sort();
    // load_concurrently finishes in any order: sort again, oldest first.
    let mut cts = crate::repo::load_concurrently(objs, |key| {
        let backend = repo.backend.clone();
        async move { Ok((backend.get(&key).await?, key)) }
    })
    .await?;
    cts.sort_by(|a, b| a.1.cmp(&b.1));
    let mut out = Vec::with_capacity(cts.len());
    for (ct, key) in cts {
        let pt = ids.decrypt(&key, &ct)?;
        out.push(
            serde_json::from_slice(&pt)
                .map_err(|e| crate::Error::Corrupt { what: key.clone(), detail: e.to_string() })?,
        );
    }
    Ok(out)
}

/// Bytes stored and logical bytes of one repository, as of now.
async fn storage_of(repo: &Repository, keys: &Keys) -> Result<StorageRow> {
    let mut row = StorageRow { reachable: true, ..Default::default() };
    let sum = |v: Vec<crate::storage::ObjectMeta>| v.iter().map(|o| o.size).sum::<u64>();
    row.packs_bytes = sum(repo.backend.list("packs/").await?);
    row.index_bytes = sum(repo.backend.list("index/").await?);
    row.snapshots_bytes = sum(repo.backend.list("snapshots/").await?);
    row.wal_bytes = sum(repo.backend.list("wal/").await?);
    row.stored_bytes = row.packs_bytes + row.index_bytes + row.snapshots_bytes + row.wal_bytes;
    let metas = repo.snapshot_metas(keys).await?;
    row.snapshots = metas.len() as u64;
    row.logical_bytes = metas.iter().map(|m| m.size).sum();
    let data = row.packs_bytes + row.index_bytes + row.snapshots_bytes;
    row.dedup_ratio = if data > 0 { Some(row.logical_bytes as f64 / data as f64) } else { None };
    Ok(row)
}

// ---------------------------------------------------------------------------
// Formatting shared by the renderers.

/// `3d`, `1d 2h`, `15m`, `42s`: the two largest units.
pub fn fmt_secs(secs: i64) -> String {
    if secs < 0 {
        return format!("-{}", fmt_secs(-secs));
    }
    let units = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, name) in units {
        if rest >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{name}", rest / size));
            rest %= size;
        }
        if parts.len() == 2 || (!parts.is_empty() && rest == 0) {
            break;
        }
    }
    parts.join(" ")
}

/// Like [`fmt_secs`], with tenths below a minute (drill timings).
pub fn fmt_secs_f(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.0}ms", secs * 1000.0)
    } else if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        fmt_secs(secs.round() as i64)
    }
}

pub fn fmt_bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", U[i]) }
}

fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn policy(body: &str) -> Policy {
        Policy::parse(std::path::Path::new("test.toml"), body).unwrap()
    }

    const POLICY: &str = r#"
[[repository]]
name = "primary"
url = "/tmp/nowhere"

[[job]]
name = "db"
kind = "command"
command = "true"
rpo = "1d"
rto = "15m"
tier = "critical"

[[job]]
name = "files"
kind = "command"
command = "true"
rpo = "2d"
"#;

    fn ctx(now: &str) -> Context {
        Context {
            month: "2026-10".parse().unwrap(),
            now: t(now),
            simulated_clock: false,
            records_from: RepoRef { name: "primary".into(), region: "local".into(), primary: true },
        }
    }

    fn backup(job: &str, time: &str, ok: bool) -> BackupRecord {
        BackupRecord {
            job: job.into(),
            time: Some(t(time)),
            ok,
            snapshot: ok.then(|| "ab".into()),
            snapshot_time: ok.then(|| t(time)),
            error: (!ok).then(|| "boom".into()),
        }
    }

    #[test]
    fn months_parse_strictly() {
        let m: Month = "2026-10".parse().unwrap();
        assert_eq!(m.start(), t("2026-10-01T00:00:00Z"));
        assert_eq!(m.end(), t("2026-11-01T00:00:00Z"));
        assert_eq!("2026-12".parse::<Month>().unwrap().end(), t("2027-01-01T00:00:00Z"));
        assert_eq!(m.title(), "October 2026");
        for bad in ["2026-13", "2026-00", "2026-1", "10-2026", "2026/10", "", "2026-10-01", "abcd-ef"] {
            let e = bad.parse::<Month>().unwrap_err().to_string();
            assert!(e.contains("YYYY-MM"), "{bad}: {e}");
        }
    }

    #[test]
    fn gaps_count_from_the_last_point_before_the_month_and_to_its_end() {
        let (s, e) = (t("2026-10-01T00:00:00Z"), t("2026-11-01T00:00:00Z"));
        let pts = [
            t("2026-09-30T20:00:00Z"),
            t("2026-10-01T02:00:00Z"),
            t("2026-10-04T02:00:00Z"),
            t("2026-11-01T02:00:00Z"),
        ];
        let g = gaps(&pts, s, e);
        assert_eq!(g.iter().map(|g| g.secs).collect::<Vec<_>>(), [6 * 3600, 3 * 86400, 27 * 86400 + 22 * 3600]);
        assert!(!g[0].from_period_start && g[2].to_period_end);
        assert_eq!(worst_gap(&g).unwrap().secs, 27 * 86400 + 22 * 3600);
        // No point before the month: the first gap starts at the month start.
        let g = gaps(&[t("2026-10-01T02:00:00Z")], s, e);
        assert_eq!(g[0].secs, 7200);
        assert!(g[0].from_period_start);
        // No point at all: the whole period is one gap.
        let g = gaps(&[], s, e);
        assert_eq!((g.len(), g[0].secs), (1, 31 * 86400));
        // Sub-second jitter rounds to the second.
        let g = gaps(&[t("2026-10-09T02:00:00.400Z"), t("2026-10-12T02:00:00.300Z")], s, e);
        assert_eq!(g[1].secs, 259200);
    }

    #[test]
    fn a_job_new_this_month_is_measured_from_its_first_run() {
        let p = policy(POLICY);
        let inputs = Inputs {
            backups: vec![backup("db", "2026-10-30T02:00:00Z", false), backup("db", "2026-10-31T02:00:00Z", true)],
            ..Default::default()
        };
        let r = build(&ctx("2026-10-31T12:00:00Z"), &p, &inputs).unwrap();
        // Not 30 days from the month start: one day from the first (failed) run to the first snapshot.
        assert_eq!(r.jobs[0].achieved_rpo_secs, 86400);
    }

    #[test]
    fn current_month_ends_now() {
        let p = policy(POLICY);
        let inputs = Inputs { backups: vec![backup("db", "2026-10-03T00:00:00Z", true)], ..Default::default() };
        let r = build(&ctx("2026-10-05T00:00:00Z"), &p, &inputs).unwrap();
        assert!(!r.month_complete);
        assert_eq!(r.period_end, t("2026-10-05T00:00:00Z"));
        let db = &r.jobs[0];
        assert_eq!(db.achieved_rpo_secs, 2 * 86400);
        assert_eq!(db.rpo_ok, Some(false));
        let e = build(&ctx("2026-09-05T00:00:00Z"), &p, &inputs).unwrap_err().to_string();
        assert!(e.contains("has not started"), "{e}");
    }

    #[test]
    fn counts_targets_and_verdict() {
        let p = policy(POLICY);
        let mut backups = vec![];
        for d in 1..=31 {
            let day = format!("2026-10-{d:02}T02:00:00Z");
            if d != 10 && d != 11 {
                backups.push(backup("db", &day, true));
            }
            backups.push(backup("files", &day, d != 5));
        }
        backups.push(backup("db", "2026-11-01T02:00:00Z", true));
        let verifications: Vec<VerificationRecord> = serde_json::from_value(serde_json::json!([
            {"job": "db", "time": "2026-10-15T03:00:00Z", "ok": true, "total_secs": 12.5,
             "checks": [{"name": "restore", "ok": true}], "unknown_field": 1},
            {"job": "files", "time": "2026-10-16T03:00:00Z", "ok": false, "error": "checksum",
             "checks": [{"name": "sha256", "ok": false, "detail": "differs"}]},
            {"job": "db", "time": "2026-09-15T03:00:00Z", "ok": true}
        ]))
        .unwrap();
        let drills: Vec<DrillRecord> = serde_json::from_value(serde_json::json!([
            {"scenario": "region-loss", "finished": "2026-10-20T10:00:00Z", "ok": true,
             "jobs": [{"job": "db", "rto_secs": 300.0, "rto_target_secs": 900.0, "rto_ok": true, "ok": true}]}
        ]))
        .unwrap();
        let inputs = Inputs { backups, verifications, drills, ..Default::default() };
        let r = build(&ctx("2026-11-21T00:00:00Z"), &p, &inputs).unwrap();
        let s = &r.summary;
        assert_eq!((s.backups_ok, s.backups_failed), (59, 1));
        assert_eq!((s.verifications_passed, s.verifications_failed), (1, 1));
        assert_eq!((s.drills_passed, s.drills_failed), (1, 0));
        assert_eq!((s.jobs_with_rpo_target, s.jobs_meeting_rpo), (2, 1));
        assert_eq!((s.jobs_with_rto_measured, s.jobs_meeting_rto), (1, 1));
        let db = &r.jobs[0];
        assert_eq!(db.achieved_rpo_secs, 3 * 86400);
        assert_eq!(db.gaps_over_target.len(), 1);
        assert_eq!(db.gaps_over_target[0].from, t("2026-10-09T02:00:00Z"));
        assert_eq!(db.rpo_ok, Some(false));
        assert_eq!(db.drill_rto_secs, Some(300.0));
        let files = &r.jobs[1];
        assert_eq!(files.achieved_rpo_secs, 2 * 86400);
        assert_eq!(files.rpo_ok, Some(true));
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.reasons[0].contains("db: RPO target 1d missed"), "{:?}", r.reasons);
        assert!(r.reasons.iter().any(|x| x.contains("verification")), "{:?}", r.reasons);
        // The renderers agree with the data.
        let md = render_markdown(&r);
        assert!(md.contains("**FAIL**"), "{md}");
        let html = render_html(&r);
        assert!(html.contains("<svg") && !html.contains("http://") && !html.contains("https://"));
    }

    #[test]
    fn wal_fills_the_gaps_after_a_base_backup() {
        let p = policy(
            r#"
[[repository]]
name = "primary"
url = "/tmp/nowhere"

[[job]]
name = "pg"
kind = "postgres"
url = "env:PG"
mode = "physical"
wal_archiving = true
rpo = "15m"
"#,
        );
        let mut wal = BTreeMap::new();
        let base = t("2026-10-01T00:00:00Z");
        // Before the base backup: does not count.
        let mut times = vec![t("2026-09-20T00:00:00Z")];
        times.extend((1..=31 * 24 * 6).map(|i| base + chrono::Duration::minutes(10 * i)));
        wal.insert("pg".to_string(), times);
        let inputs = Inputs { backups: vec![backup("pg", "2026-10-01T00:00:00Z", true)], wal, ..Default::default() };
        let r = build(&ctx("2026-11-21T00:00:00Z"), &p, &inputs).unwrap();
        assert_eq!(r.jobs[0].achieved_rpo_secs, 600);
        assert_eq!(r.jobs[0].rpo_ok, Some(true));
        assert_eq!(r.jobs[0].wal_points, 31 * 24 * 6 - 1);
    }

    #[test]
    fn an_empty_month_says_so() {
        let r = build(&ctx("2026-11-21T00:00:00Z"), &policy(POLICY), &Inputs::default()).unwrap();
        assert_eq!(r.verdict, Verdict::NoData);
        assert!(render_markdown(&r).contains("No records for October 2026"));
        assert!(render_html(&r).contains("No records for October 2026"));
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(fmt_secs(259200), "3d");
        assert_eq!(fmt_secs(93784), "1d 2h");
        assert_eq!(fmt_secs(900), "15m");
        assert_eq!(fmt_secs(90), "1m 30s");
        assert_eq!(fmt_secs(0), "0s");
        assert_eq!(fmt_secs_f(12.34), "12.3s");
        assert_eq!(fmt_secs_f(0.0421), "42ms");
        assert_eq!(fmt_secs_f(125.0), "2m 5s");
    }
}
