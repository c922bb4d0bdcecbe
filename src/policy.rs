//! Policy files (`policies/*.toml`): repositories and jobs.
//!
//! Secrets never appear inline: a job's `url` is `env:NAME` or `file:PATH`.
//! Parse errors carry `file:line:column`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::storage::RepoUrl;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, rename = "repository")]
    pub repositories: Vec<RepositorySpec>,
    #[serde(default, rename = "job")]
    pub jobs: Vec<JobSpec>,
    #[serde(default)]
    pub alerts: Option<AlertsSpec>,
    #[serde(default, rename = "scenario")]
    pub scenarios: Vec<ScenarioSpec>,
    #[serde(default)]
    pub daemon: Option<DaemonSpec>,
    #[serde(skip)]
    pub path: PathBuf,
    #[serde(skip)]
    pub text: String,
}

/// Where failures and stale recovery points are reported.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSpec {
    /// Slack-compatible incoming webhook: `env:NAME` or `file:PATH` (the URL is a secret).
    #[serde(default)]
    pub webhook: Option<String>,
    /// Prometheus Pushgateway base URL (CronJob mode), e.g. http://pushgateway:9091.
    #[serde(default)]
    pub pushgateway: Option<String>,
}

/// A DR drill scenario (`lifeboat drill --scenario NAME`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    pub name: String,
    /// `region-loss` or `database-loss`.
    pub kind: String,
    /// Jobs the drill restores (default: all).
    #[serde(default)]
    pub jobs: Option<Vec<String>>,
    /// For region-loss: the replica repository to restore from (default: the first replica).
    #[serde(default)]
    pub replica: Option<String>,
    #[serde(default)]
    pub runbook: Option<String>,
}

/// `lifeboat daemon` settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonSpec {
    /// Jobs running at once (default 2).
    #[serde(default)]
    pub max_concurrent: Option<usize>,
    /// Random delay before each run, e.g. "30s" (default 0).
    #[serde(default)]
    pub jitter: Option<String>,
    /// Runs missed while the daemon was down: "once" (run one now, default) or "skip".
    #[serde(default)]
    pub catch_up: Option<String>,
    /// Address of /metrics and /healthz (default 127.0.0.1:9184).
    #[serde(default)]
    pub listen: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySpec {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub region: Option<String>,
}

impl RepositorySpec {
    /// The region: the `region` field, else the URL's `region=`, else "local" for paths.
    pub fn region(&self) -> String {
        if let Some(r) = &self.region {
            return r.clone();
        }
        match self.url.parse::<RepoUrl>() {
            Ok(RepoUrl::S3(o)) => o.region.unwrap_or_else(|| "us-east-1".into()),
            _ => "local".into(),
        }
    }
    pub fn repo_url(&self) -> Result<RepoUrl> {
        self.url.parse::<RepoUrl>().map_err(|e| Error::Policy(e.to_string()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    Postgres,
    Redis,
    Kubernetes,
    Etcd,
    Command,
}

impl JobKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::Postgres => "postgres",
            JobKind::Redis => "redis",
            JobKind::Kubernetes => "kubernetes",
            JobKind::Etcd => "etcd",
            JobKind::Command => "command",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub name: String,
    pub kind: JobKind,
    /// Connection: `env:NAME` or `file:PATH`.
    #[serde(default)]
    pub url: Option<String>,
    /// `command` jobs: a shell command whose stdout is backed up.
    #[serde(default)]
    pub command: Option<String>,
    /// `command` jobs: the default restore command (reads the stream on stdin).
    #[serde(default)]
    pub restore_command: Option<String>,
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub schedule: Option<String>,
    /// IANA time zone of the schedule (default UTC).
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub rpo: Option<String>,
    #[serde(default)]
    pub rto: Option<String>,
    #[serde(default)]
    pub retention: Option<toml::Table>,
    /// Per-tag retention, e.g. `tag_retention = { manual = { within = "30d" } }`.
    #[serde(default)]
    pub tag_retention: Option<toml::Table>,
    #[serde(default)]
    pub tags: Vec<String>,

    // --- postgres ---
    /// `"all"` or a list of database names (logical mode).
    #[serde(default)]
    pub databases: Option<crate::source::postgres::Databases>,
    #[serde(default)]
    pub exclude_tables: Vec<String>,
    #[serde(default)]
    pub pg_dump_options: Vec<String>,
    /// `exact` (default), `estimated` or `off`.
    #[serde(default)]
    pub row_counts: Option<crate::source::postgres::RowCounts>,
    #[serde(default)]
    pub pg_bin: Option<PathBuf>,
    /// Physical mode: cut data files into pages so later base backups store
    /// only changed pages (default true in format 2 repositories: see
    /// docs/PERFORMANCE.md; false cuts by content, ~13 % smaller first backup).
    #[serde(default)]
    pub chunk_pages: Option<bool>,
    /// Continuous WAL archiving (`archive_command = 'lifeboat wal push …'`) is set up for this job.
    #[serde(default)]
    pub wal_archiving: bool,

    // --- kubernetes ---
    /// Kubeconfig file (default: in-cluster service account, then KUBECONFIG / ~/.kube/config).
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context (default: the current one).
    #[serde(default)]
    pub context: Option<String>,
    /// Only these namespaces (default: all); cluster-scoped types are always exported.
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub exclude_namespaces: Vec<String>,
    /// Only these resource types (`deployments`, `deployments.apps`, `Deployment`, `widgets.example.com`).
    #[serde(default)]
    pub resources: Vec<String>,
    #[serde(default)]
    pub exclude_resources: Vec<String>,
    #[serde(default)]
    pub label_selector: Option<String>,
    /// Also export objects a controller owns (ReplicaSets and Pods of Deployments…).
    #[serde(default)]
    pub include_owned: bool,

    // --- etcd ---
    /// `https://host:2379` (several: the first that answers).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// CA bundle, client certificate and client key (file paths; `file:PATH` also accepted).
    #[serde(default)]
    pub cacert: Option<String>,
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub key: Option<String>,

    /// How `lifeboat verify` and drills check a restore (`[job.verify]`).
    #[serde(default)]
    pub verify: Option<crate::verify::VerifySpec>,
}

impl JobSpec {
    pub fn pg_options(&self) -> crate::source::postgres::PgOptions {
        crate::source::postgres::PgOptions {
            databases: self.databases.clone(),
            exclude_tables: self.exclude_tables.clone(),
            pg_dump_options: self.pg_dump_options.clone(),
            row_counts: self.row_counts,
            pg_bin: self.pg_bin.clone(),
            chunk_pages: self.chunk_pages,
        }
    }

    pub fn kube_options(&self) -> crate::source::kubernetes::ExportOptions {
        crate::source::kubernetes::ExportOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
            namespaces: self.namespaces.clone(),
            exclude_namespaces: self.exclude_namespaces.clone(),
            resources: self.resources.clone(),
            exclude_resources: self.exclude_resources.clone(),
            label_selector: self.label_selector.clone(),
            include_owned: self.include_owned,
        }
    }

    /// etcd connection; `env:NAME` names a variable holding the path, `file:PATH` is the path.
    pub fn etcd_options(&self) -> Result<crate::source::etcd::EtcdOptions> {
        let path = |v: &Option<String>| -> Result<Option<PathBuf>> {
            Ok(match v.as_deref() {
                None => None,
                Some(r) if r.starts_with("env:") => Some(PathBuf::from(resolve_secret(r)?)),
                Some(r) => Some(PathBuf::from(r.strip_prefix("file:").unwrap_or(r))),
            })
        };
        Ok(crate::source::etcd::EtcdOptions {
            endpoints: self.endpoints.clone(),
            cacert: path(&self.cacert)?,
            cert: path(&self.cert)?,
            key: path(&self.key)?,
        })
    }

    /// The connection string, resolved from `env:` / `file:`.
    pub fn connection(&self) -> Result<String> {
        let r = self
            .url
            .as_deref()
            .ok_or_else(|| Error::Policy(format!("job {:?} has no url = \"env:NAME\"", self.name)))?;
        resolve_secret(r)
    }
}

/// Where `"value"` first appears after `"anchor"` (e.g. a key of a named job).
fn locate_after(path: &Path, text: &str, anchor: &str, value: &str) -> String {
    let start = text.find(&format!("\"{anchor}\"")).unwrap_or(0);
    let quoted = format!("\"{value}\"");
    let found = text[start..].find(&quoted).or_else(|| text[start..].find(value));
    match found {
        Some(off) => position(path, text, start + off),
        None => position(path, text, start),
    }
}

/// `path:line:column` for a byte offset in `text`.
fn position(path: &Path, text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map(|l| l.chars().count()).unwrap_or(0) + 1;
    format!("{}:{}:{}", path.display(), line, col)
}

/// Where `name = "<value>"` first appears, for errors about a named entry.
fn locate(path: &Path, text: &str, value: &str) -> String {
    let needle = format!("\"{value}\"");
    match text.find(&needle) {
        Some(off) => position(path, text, off),
        None => path.display().to_string(),
    }
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Policy(format!("{}: cannot read policy: {e}", path.display())))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Policy> {
        let mut p: Policy = toml::from_str(text).map_err(|e| {
            let at = match e.span() {
                Some(span) => position(path, text, span.start),
                None => path.display().to_string(),
            };
            Error::Policy(format!("{at}: {}", e.message().trim()))
        })?;
        p.path = path.to_path_buf();
        p.text = text.to_string();
        p.validate(text)?;
        Ok(p)
    }

    fn validate(&self, text: &str) -> Result<()> {
        let err = |value: &str, msg: String| Error::Policy(format!("{}: {msg}", locate(&self.path, text, value)));
        let mut seen = std::collections::HashSet::new();
        for r in &self.repositories {
            if !seen.insert(&r.name) {
                return Err(err(&r.name, format!("repository {:?} is defined twice", r.name)));
            }
            r.url.parse::<RepoUrl>().map_err(|e| err(&r.url, e.to_string()))?;
        }
        let mut seen = std::collections::HashSet::new();
        for j in &self.jobs {
            if !seen.insert(&j.name) {
                return Err(err(&j.name, format!("job {:?} is defined twice", j.name)));
            }
            if matches!(j.kind, JobKind::Postgres | JobKind::Redis) && j.url.is_none() {
                return Err(err(
                    &j.name,
                    format!("job {:?} needs url = \"env:NAME\" (or file:PATH) for its connection", j.name),
                ));
            }
            if let Some(m) = &j.mode {
                let ok = match j.kind {
                    JobKind::Postgres => ["logical", "physical"].contains(&m.as_str()),
                    JobKind::Redis => ["rdb", "logical"].contains(&m.as_str()),
                    _ => false,
                };
                if !ok {
                    return Err(err(
                        m,
                        format!("job {:?}: mode {m:?} is not valid for kind {:?}", j.name, j.kind.as_str()),
                    ));
                }
            }
            if let Some(sch) = &j.schedule {
                crate::schedule::Schedule::parse(sch, j.timezone.as_deref())
                    .map_err(|e| err(sch, format!("job {:?}: {e}", j.name)))?;
            }
            for d in [&j.rpo, &j.rto].into_iter().flatten() {
                crate::schedule::parse_duration(d).map_err(|e| err(d, format!("job {:?}: {e}", j.name)))?;
            }
            if j.kind == JobKind::Etcd && j.endpoints.is_empty() {
                return Err(err(
                    &j.name,
                    format!("job {:?} has kind = \"etcd\" but no endpoints = [\"https://host:2379\"]", j.name),
                ));
            }
            if j.kind == JobKind::Etcd && j.cert.is_some() != j.key.is_some() {
                return Err(err(
                    &j.name,
                    format!("job {:?}: cert and key go together (client TLS needs both)", j.name),
                ));
            }
            if j.kind == JobKind::Command && j.command.is_none() {
                return Err(err(&j.name, format!("job {:?} has kind = \"command\" but no command = \"…\"", j.name)));
            }
            if let Some(u) = &j.url
                && !(u.starts_with("env:") || u.starts_with("file:"))
            {
                return Err(err(
                    u,
                    format!("job {:?}: url must be env:NAME or file:PATH so that no secret sits in the policy", j.name),
                ));
            }
        }
        Ok(())
    }

    pub fn job(&self, name: &str) -> Result<&JobSpec> {
        self.jobs.iter().find(|j| j.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.jobs.iter().map(|j| j.name.as_str()).collect();
            Error::Policy(format!("{}: no job named {name:?} (jobs: {})", self.path.display(), names.join(", ")))
        })
    }

    /// Problems that make the policy unable to keep its promises, each
    /// with `file:line:column`.
    pub fn lints(&self) -> Vec<String> {
        use crate::schedule::{Schedule, fmt_duration, parse_duration};
        let mut out = Vec::new();
        let at = |anchor: &str, value: &str| locate_after(&self.path, &self.text, anchor, value);
        let now = crate::clock::now();
        // Regions.
        let regions: Vec<String> = self.repositories.iter().map(|r| r.region()).collect();
        if let Some(primary) = self.repositories.first() {
            let distinct: std::collections::HashSet<&String> = regions.iter().collect();
            if distinct.len() < 2 {
                out.push(format!(
                    "{}: all repositories are in region {:?}: a regional outage loses every copy; add a [[repository]] in another region",
                    at(&primary.name, &primary.name),
                    regions[0]
                ));
            }
            for (r, region) in self.repositories.iter().zip(&regions).skip(1) {
                if *region == regions[0] && distinct.len() >= 2 {
                    out.push(format!(
                        "{}: replica {:?} is in the same region ({region}) as the primary {:?}: it does not survive a region loss",
                        at(&r.name, &r.name),
                        r.name,
                        primary.name
                    ));
                }
            }
        } else {
            out.push(format!("{}: no [[repository]]: backups have nowhere to go", self.path.display()));
        }
        for j in &self.jobs {
            let sched = j.schedule.as_deref().and_then(|s| Schedule::parse(s, j.timezone.as_deref()).ok());
            let interval = sched.as_ref().map(|s| s.max_interval(now));
            // Schedule vs RPO.
            if let (Some(rpo), Some(iv)) = (j.rpo.as_deref().and_then(|r| parse_duration(r).ok()), interval) {
                let continuous = j.kind == JobKind::Postgres && j.wal_archiving;
                if iv > rpo && !continuous {
                    let hint = if j.kind == JobKind::Postgres {
                        "enable continuous WAL archiving (a physical job with wal_archiving = true) or run more often"
                    } else {
                        "run more often"
                    };
                    out.push(format!(
                        "{}: job {:?}: schedule {:?} runs every {}, which cannot meet rpo = {:?}; {hint}",
                        at(&j.name, j.schedule.as_deref().unwrap_or_default()),
                        j.name,
                        j.schedule.as_deref().unwrap_or_default(),
                        fmt_duration(iv),
                        j.rpo.as_deref().unwrap_or_default()
                    ));
                }
            }
            // Retention shorter than the schedule interval.
            if let (Some(ret), Some(iv)) = (&j.retention, interval)
                && let Some(within) = ret.get("within").and_then(|v| v.as_str()).and_then(|w| parse_duration(w).ok())
            {
                let others = ret.keys().any(|k| k != "within");
                if within < iv && !others {
                    out.push(format!(
                            "{}: job {:?}: retention within = {} is shorter than the schedule interval ({}): between runs no snapshot would be kept",
                            at(&j.name, "within"),
                            j.name,
                            fmt_duration(within),
                            fmt_duration(iv)
                        ));
                }
            }
            // Targets no drill covers.
            if j.rto.is_some() || j.rpo.is_some() {
                let covered = self.scenarios.iter().any(|s| s.jobs.as_ref().is_none_or(|js| js.contains(&j.name)));
                if !covered {
                    out.push(format!(
                        "{}: job {:?} has RTO/RPO targets but no [[scenario]] drills it, so they are never measured",
                        at(&j.name, &j.name),
                        j.name
                    ));
                }
            }
        }
        out
    }

    /// The first repository is the primary.
    pub fn primary(&self) -> Result<RepoUrl> {
        let r = self
            .repositories
            .first()
            .ok_or_else(|| Error::Policy(format!("{}: no [[repository]] defined", self.path.display())))?;
        r.url.parse::<RepoUrl>().map_err(|e| Error::Policy(e.to_string()))
    }
}

/// Resolve `env:NAME` / `file:PATH` to the secret value.
pub fn resolve_secret(reference: &str) -> Result<String> {
    if let Some(name) = reference.strip_prefix("env:") {
        std::env::var(name).map_err(|_| Error::Policy(format!("environment variable {name} is not set")))
    } else if let Some(path) = reference.strip_prefix("file:") {
        std::fs::read_to_string(path)
            .map(|s| s.trim_end().to_string())
            .map_err(|e| Error::Policy(format!("cannot read {path}: {e}")))
    } else {
        Err(Error::Policy("secret references are env:NAME or file:PATH".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_errors_have_positions() {
        let e = Policy::parse(Path::new("p.toml"), "[[job]]\nname = \"a\"\nkind = \n").unwrap_err().to_string();
        assert!(e.starts_with("p.toml:3:"), "{e}");
        let e = Policy::parse(Path::new("p.toml"), "[[job]]\nname = \"a\"\nkind = \"ftp\"\n").unwrap_err().to_string();
        assert!(e.starts_with("p.toml:3:8"), "{e}");
    }

    #[test]
    fn semantic_errors_name_the_line() {
        let t = "[[repository]]\nname = \"r\"\nurl = \"/tmp/x\"\n[[job]]\nname = \"a\"\nkind = \"command\"\n";
        let e = Policy::parse(Path::new("p.toml"), t).unwrap_err().to_string();
        assert!(e.starts_with("p.toml:5:8"), "{e}");
        let t = "[[job]]\nname = \"a\"\nkind = \"postgres\"\nurl = \"postgres://u:secret@h/db\"\n";
        let e = Policy::parse(Path::new("p.toml"), t).unwrap_err().to_string();
        assert!(e.contains("env:NAME"), "{e}");
    }
}
