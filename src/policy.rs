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
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepositorySpec {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub region: Option<String>,
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
    #[serde(default)]
    pub tier: Option<String>,
    #[serde(default)]
    pub rpo: Option<String>,
    #[serde(default)]
    pub rto: Option<String>,
    #[serde(default)]
    pub retention: Option<toml::Table>,
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
    /// Continuous WAL archiving (`archive_command = 'lifeboat wal push …'`) is set up for this job.
    #[serde(default)]
    pub wal_archiving: bool,
}

impl JobSpec {
    pub fn pg_options(&self) -> crate::source::postgres::PgOptions {
        crate::source::postgres::PgOptions {
            databases: self.databases.clone(),
            exclude_tables: self.exclude_tables.clone(),
            pg_dump_options: self.pg_dump_options.clone(),
            row_counts: self.row_counts,
            pg_bin: self.pg_bin.clone(),
        }
    }

    /// The connection string, resolved from `env:` / `file:`.
    pub fn connection(&self) -> Result<String> {
        let r = self.url.as_deref().ok_or_else(|| Error::Policy(format!("job {:?} has no url = \"env:NAME\"", self.name)))?;
        resolve_secret(r)
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
                return Err(err(&j.name, format!("job {:?} needs url = \"env:NAME\" (or file:PATH) for its connection", j.name)));
            }
            if let Some(m) = &j.mode {
                let ok = match j.kind {
                    JobKind::Postgres => ["logical", "physical"].contains(&m.as_str()),
                    JobKind::Redis => ["rdb", "logical"].contains(&m.as_str()),
                    _ => false,
                };
                if !ok {
                    return Err(err(m, format!("job {:?}: mode {m:?} is not valid for kind {:?}", j.name, j.kind.as_str())));
                }
            }
            if j.kind == JobKind::Command && j.command.is_none() {
                return Err(err(&j.name, format!("job {:?} has kind = \"command\" but no command = \"…\"", j.name)));
            }
            if let Some(u) = &j.url {
                if !(u.starts_with("env:") || u.starts_with("file:")) {
                    return Err(err(u, format!(
                        "job {:?}: url must be env:NAME or file:PATH so that no secret sits in the policy",
                        j.name
                    )));
                }
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
