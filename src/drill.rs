//! Timed disaster-recovery drills.
//!
//! A drill plays an incident that happens *now*: the drill's start is the
//! incident time. For every job of the scenario it takes the newest
//! recoverable point the surviving repository holds, restores it into
//! scratch targets and verifies it ([`crate::verify`]), and measures
//!
//! - **RTO** = from the incident to the moment that job's restore is verified;
//! - **RPO** = the incident time minus the newest recoverable point.
//!
//! Jobs restore concurrently, as the teams of a real recovery would. Scenarios:
//!
//! - `region-loss`: the primary repository is treated as gone; everything comes
//!   from the scenario's `replica` (default: the first replica);
//! - `database-loss`: the servers are gone, the primary repository is there;
//!   restore the newest snapshot plus the WAL archive up to now.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::crypto::Identities;
use crate::error::{Error, Result};
use crate::policy::{JobKind, JobSpec, Policy, RepositorySpec, ScenarioSpec};
use crate::repo::{Keys, Repository};
use crate::source::wal;
use crate::verify::{Check, VerifyOptions, verify};

/// One job's line in a drill.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DrillJob {
    pub job: String,
    pub tier: Option<String>,
    pub snapshot: Option<String>,
    pub snapshot_time: Option<chrono::DateTime<chrono::Utc>>,
    pub recoverable_point: Option<chrono::DateTime<chrono::Utc>>,
    pub rto_target_secs: Option<f64>,
    pub rto_secs: Option<f64>,
    pub rto_ok: Option<bool>,
    pub rpo_target_secs: Option<f64>,
    pub rpo_secs: Option<f64>,
    pub rpo_ok: Option<bool>,
    pub verified: bool,
    pub ok: bool,
    pub error: Option<String>,
    #[serde(default)]
    pub checks: Vec<Check>,
}

/// The drill record (`records/drill/`), also what `drill --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drill {
    pub scenario: String,
    pub kind: String,
    pub runbook: Option<String>,
    /// The incident: when the drill started.
    pub incident: chrono::DateTime<chrono::Utc>,
    pub finished: chrono::DateTime<chrono::Utc>,
    /// The repository everything was restored from.
    pub repository: String,
    pub region: String,
    pub ok: bool,
    #[serde(default)]
    pub simulated_clock: bool,
    pub jobs: Vec<DrillJob>,
}

/// The newest point a job can be restored to from `repo`: its newest
/// snapshot, or for PostgreSQL with WAL archiving the newest archived WAL
/// after a base backup.
pub async fn newest_recoverable(
    repo: &Repository,
    keys: &Keys,
    job: &JobSpec,
) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
    let metas = repo.snapshot_metas(keys).await?;
    let mine: Vec<_> = metas.iter().filter(|m| m.name == job.name).collect();
    let mut point =
        mine.iter().map(|m| if m.mode.as_deref() == Some("physical") { m.finished } else { m.started }).max();
    if job.kind == JobKind::Postgres
        && job.wal_archiving
        && let Some(base) = mine.iter().filter(|m| m.mode.as_deref() == Some("physical")).map(|m| m.started).max()
    {
        let last = wal::list(repo, &job.name).await?.into_iter().map(|h| h.pushed_at).filter(|t| *t >= base).max();
        point = point.max(last);
    }
    Ok(point)
}

/// The repository a scenario restores from.
pub fn surviving_repository<'a>(policy: &'a Policy, s: &ScenarioSpec) -> Result<&'a RepositorySpec> {
    let primary =
        policy.repositories.first().ok_or_else(|| Error::Policy("the policy has no [[repository]]".into()))?;
    match s.kind.as_str() {
        "region-loss" => match &s.replica {
            Some(name) => policy.repositories.iter().skip(1).find(|r| &r.name == name).ok_or_else(|| {
                Error::Policy(format!("scenario {:?}: replica {name:?} is not a [[repository]] of the policy", s.name))
            }),
            None => policy.repositories.get(1).ok_or_else(|| {
                Error::Policy(format!(
                    "scenario {:?} (region-loss) needs a replica repository in another region; the policy has only one",
                    s.name
                ))
            }),
        },
        "database-loss" => Ok(primary),
        other => Err(Error::Policy(format!(
            "scenario {:?} has kind {other:?}; lifeboat drills \"region-loss\" and \"database-loss\"",
            s.name
        ))),
    }
}

/// The jobs a scenario drills: its `jobs`, else every scheduled job.
pub fn scenario_jobs<'a>(policy: &'a Policy, s: &ScenarioSpec) -> Result<Vec<&'a JobSpec>> {
    match &s.jobs {
        Some(names) => names.iter().map(|n| policy.job(n)).collect(),
        None => Ok(policy.jobs.iter().filter(|j| j.schedule.is_some()).collect()),
    }
}

/// What a drill needs to restore: the identity (file) and the binary for `restore_command`.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    pub identity_file: PathBuf,
    pub exe: PathBuf,
}

fn secs(d: Option<&str>) -> Option<f64> {
    d.and_then(|d| crate::schedule::parse_duration(d).ok()).map(|d| d.num_milliseconds() as f64 / 1000.0)
}

/// Run one scenario. Fails as a whole only when the surviving repository cannot be opened.
pub async fn run(policy: &Policy, s: &ScenarioSpec, o: &DrillOptions) -> Result<Drill> {
    let span = tracing::info_span!("drill", scenario = %s.name);
    tracing::Instrument::instrument(run_inner(policy, s, o), span).await
}

async fn run_inner(policy: &Policy, s: &ScenarioSpec, o: &DrillOptions) -> Result<Drill> {
    let incident = crate::clock::now();
    let t0 = Instant::now();
    let spec = surviving_repository(policy, s)?;
    let jobs = scenario_jobs(policy, s)?;
    let url = spec.repo_url()?;
    let repo = Repository::open(&url).await?;
    let keys = repo.unlock_identity(Identities::from_file(&o.identity_file)?).await?;
    let vo = VerifyOptions {
        repository: spec.name.clone(),
        region: spec.region(),
        repo_url: url.absolute().unwrap_or_else(|_| url.to_string()),
        identity_file: Some(std::fs::canonicalize(&o.identity_file).unwrap_or_else(|_| o.identity_file.clone())),
        exe: o.exe.clone(),
    };
    let one = |job: &JobSpec| {
        let (repo, keys, vo) = (&repo, &keys, &vo);
        let job = job.clone();
        async move {
            let mut line = DrillJob {
                job: job.name.clone(),
                tier: job.tier.clone(),
                snapshot: None,
                snapshot_time: None,
                recoverable_point: None,
                rto_target_secs: secs(job.rto.as_deref()),
                rto_secs: None,
                rto_ok: None,
                rpo_target_secs: secs(job.rpo.as_deref()),
                rpo_secs: None,
                rpo_ok: None,
                verified: false,
                ok: false,
                error: None,
                checks: Vec::new(),
            };
            match newest_recoverable(repo, keys, &job).await {
                Ok(Some(p)) => {
                    line.recoverable_point = Some(p);
                    line.rpo_secs = Some((incident - p).num_milliseconds().max(0) as f64 / 1000.0);
                }
                Ok(None) => {
                    line.error = Some(format!("repository {} holds no snapshot of job {}", vo.repository, job.name));
                    return line;
                }
                Err(e) => {
                    line.error = Some(e.to_string());
                    return line;
                }
            }
            let v = verify(repo, keys, &job, "latest", vo).await;
            line.rto_secs = Some(t0.elapsed().as_secs_f64());
            line.snapshot = v.snapshot.clone();
            line.snapshot_time = v.snapshot_time;
            line.verified = v.ok;
            if !v.ok {
                line.error = Some(v.summary());
            }
            line.checks = v.checks;
            line.rto_ok = line.rto_target_secs.zip(line.rto_secs).map(|(t, m)| m <= t);
            line.rpo_ok = line.rpo_target_secs.zip(line.rpo_secs).map(|(t, m)| m <= t);
            line.ok = line.verified && line.rto_ok != Some(false) && line.rpo_ok != Some(false);
            line
        }
    };
    let lines = futures::future::join_all(jobs.iter().map(|j| one(j))).await;
    let ok = !lines.is_empty() && lines.iter().all(|l| l.ok);
    Ok(Drill {
        scenario: s.name.clone(),
        kind: s.kind.clone(),
        runbook: s.runbook.clone(),
        incident,
        finished: crate::clock::now(),
        repository: spec.name.clone(),
        region: spec.region(),
        ok,
        simulated_clock: crate::clock::simulated(),
        jobs: lines,
    })
}

/// Store a record in the repository it came from and in the primary (where
/// reports read), under one key. Returns the problems, if any, as text.
pub async fn store_record(policy: &Policy, from: &str, kind: &str, record: &serde_json::Value) -> Vec<String> {
    let key = crate::repo::record_key(kind);
    let mut problems = Vec::new();
    let mut targets: Vec<&RepositorySpec> = policy.repositories.iter().filter(|r| r.name == from).collect();
    if let Some(p) = policy.repositories.first()
        && p.name != from
    {
        targets.push(p);
    }
    // One ciphertext for every copy (see Repository::seal_record).
    let mut sealed = None;
    for r in targets {
        let res = async {
            let repo = Repository::open(&r.repo_url()?).await?;
            let ct = match &sealed {
                Some(ct) => bytes::Bytes::clone(ct),
                None => sealed.insert(repo.seal_record(record)?).clone(),
            };
            repo.put_sealed_record(&key, ct).await
        }
        .await;
        if let Err(e) = res {
            problems.push(format!("cannot store the {kind} record in {}: {e}", r.name));
        }
    }
    problems
}

/// Seconds as a short human figure: 850 ms, 12.3 s, 14 min 5 s, 2 h, 2 h 10 min, 3.5 d.
pub fn fmt_secs(s: f64) -> String {
    let two = |big: u64, bu: &str, small: u64, su: &str| {
        if small == 0 { format!("{big} {bu}") } else { format!("{big} {bu} {small} {su}") }
    };
    if s < 1.0 {
        format!("{:.0} ms", s * 1000.0)
    } else if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        two((s / 60.0) as u64, "min", (s % 60.0) as u64, "s")
    } else if s < 86400.0 * 2.0 {
        two((s / 3600.0) as u64, "h", ((s % 3600.0) / 60.0) as u64, "min")
    } else {
        format!("{:.1} d", s / 86400.0)
    }
}
