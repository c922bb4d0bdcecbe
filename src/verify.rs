//! Restore verification: restore a snapshot into a scratch target and prove
//! that what came back is what was backed up.
//!
//! | kind | scratch target | checks |
//! |------|----------------|--------|
//! | command | a hashing sink, or the job's `[job.verify] command` in a temp dir | every chunk authenticates, size matches, command exits 0 |
//! | postgres (logical) | an ephemeral PostgreSQL of the snapshot's major version, or `[job.verify] target` | tables and row counts equal the manifest's fingerprint; SQL assertions |
//! | postgres (physical) | the base backup in a temp dir, started with recovery from the WAL archive | recovery to the newest archived point finishes; SQL assertions |
//! | redis | an ephemeral redis-server (loads the RDB, or receives the key records) | keys per database (and per type for logical snapshots) equal the manifest's |
//! | kubernetes | none: a full parse and the dependency-ordered restore plan | every object parses; the plan covers them |
//! | etcd | a restored data dir and a temporary etcd started from it | the member starts; key count and revision match |
//!
//! A verification never fails with an error: problems become failed checks,
//! so a record is always written and the caller alerts on `ok == false`.

use std::path::PathBuf;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pipeline::restore_stream;
use crate::policy::{JobKind, JobSpec};
use crate::repo::{Index, Keys, Manifest, Repository};
use crate::scratch::{ScratchDir, ScratchPostgres, ScratchRedis, free_port, is_root};
use crate::source::postgres as pg;
use crate::source::redis as rd;

/// One named check of a verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check { name: name.into(), ok: true, detail: detail.into() }
    }
    fn fail(name: &str, detail: impl Into<String>) -> Check {
        Check { name: name.into(), ok: false, detail: detail.into() }
    }
}

/// The verification record (`records/verification/`), also what `verify --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verification {
    pub job: String,
    pub kind: String,
    pub time: chrono::DateTime<chrono::Utc>,
    pub snapshot: Option<String>,
    pub snapshot_time: Option<chrono::DateTime<chrono::Utc>>,
    pub repository: String,
    pub region: String,
    pub ok: bool,
    pub restore_secs: f64,
    pub verify_secs: f64,
    pub total_secs: f64,
    pub checks: Vec<Check>,
    pub error: Option<String>,
    /// For physical PostgreSQL: the newest point recovery reached.
    #[serde(default)]
    pub recovered_to: Option<chrono::DateTime<chrono::Utc>>,
    #[serde(default)]
    pub simulated_clock: bool,
}

impl Verification {
    /// One line naming the job, the snapshot and the first failure.
    pub fn summary(&self) -> String {
        let snap = self.snapshot.as_deref().map(|s| &s[..8.min(s.len())]).unwrap_or("-");
        if self.ok {
            format!(
                "job {} snapshot {snap}: verified ({} checks passed) in {:.1}s",
                self.job,
                self.checks.len(),
                self.total_secs
            )
        } else {
            let why = self
                .error
                .clone()
                .or_else(|| self.checks.iter().find(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.detail)))
                .unwrap_or_default();
            format!("job {} snapshot {snap}: verification FAILED: {why}", self.job)
        }
    }
}

/// `[job.verify]` in a policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    /// A scratch server to restore into instead of an ephemeral one (`env:NAME`
    /// or `file:PATH` holding a URL). Databases restored there are dropped and recreated.
    #[serde(default)]
    pub target: Option<String>,
    /// `command` jobs: `sh -c COMMAND` reads the restored stream on stdin in a temp dir (e.g. "tar -x").
    #[serde(default)]
    pub command: Option<String>,
    /// SQL assertions run on the restored database.
    #[serde(default, rename = "assert")]
    pub asserts: Vec<SqlAssert>,
}

/// `[[job.verify.assert]]`: a query returning one value, and what it must be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlAssert {
    pub sql: String,
    /// Database to run it in (default: the snapshot's only or first database).
    #[serde(default)]
    pub database: Option<String>,
    /// `> 0` (default), `>= N`, `= N`, `!= N`, `< N`, `<= N`, or `true`.
    #[serde(default)]
    pub expect: Option<String>,
}

/// Does `value` (a query result as text) satisfy `expect`?
pub fn expectation_holds(value: &str, expect: &str) -> std::result::Result<bool, String> {
    let e = expect.trim();
    if e.eq_ignore_ascii_case("true") || e.eq_ignore_ascii_case("false") {
        let want = e.eq_ignore_ascii_case("true");
        return match value {
            "t" | "true" => Ok(want),
            "f" | "false" => Ok(!want),
            other => Err(format!("expected a boolean, got {other:?}")),
        };
    }
    let (op, rest) = ["<=", ">=", "!=", "=", "<", ">"]
        .iter()
        .find_map(|op| e.strip_prefix(op).map(|r| (*op, r)))
        .ok_or_else(|| format!("expect {expect:?} is not like \"> 0\" or \"= 5\" or \"true\""))?;
    let want: f64 = rest.trim().parse().map_err(|_| format!("expect {expect:?}: {:?} is not a number", rest.trim()))?;
    let got: f64 = value.trim().parse().map_err(|_| format!("the query returned {value:?}, not a number"))?;
    Ok(match op {
        "<=" => got <= want,
        ">=" => got >= want,
        "!=" => got != want,
        "=" => got == want,
        "<" => got < want,
        _ => got > want,
    })
}

/// What verification needs beyond the repository.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Name and region of the repository verified from (for the record).
    pub repository: String,
    pub region: String,
    /// Repository URL and identity file a physical restore's `restore_command` uses.
    pub repo_url: String,
    pub identity_file: Option<PathBuf>,
    /// The lifeboat binary (for `restore_command`).
    pub exe: PathBuf,
}

/// Verify one snapshot of `job`. `snapshot`: an id, a prefix or `latest`.
pub async fn verify(repo: &Repository, keys: &Keys, job: &JobSpec, snapshot: &str, o: &VerifyOptions) -> Verification {
    let span = tracing::info_span!("verify", job = %job.name);
    tracing::Instrument::instrument(verify_inner(repo, keys, job, snapshot, o), span).await
}

async fn verify_inner(
    repo: &Repository,
    keys: &Keys,
    job: &JobSpec,
    snapshot: &str,
    o: &VerifyOptions,
) -> Verification {
    let t0 = Instant::now();
    let mut v = Verification {
        job: job.name.clone(),
        kind: job.kind.as_str().into(),
        time: crate::clock::now(),
        snapshot: None,
        snapshot_time: None,
        repository: o.repository.clone(),
        region: o.region.clone(),
        ok: false,
        restore_secs: 0.0,
        verify_secs: 0.0,
        total_secs: 0.0,
        checks: Vec::new(),
        error: None,
        recovered_to: None,
        simulated_clock: crate::clock::simulated(),
    };
    let found = async {
        let m = repo.find_snapshot(keys, snapshot, Some(&job.name)).await?;
        let index = repo.load_index(keys).await?;
        Ok::<_, Error>((m, index))
    }
    .await;
    match found {
        Ok((m, index)) => {
            v.snapshot = Some(m.id.clone());
            v.snapshot_time = Some(m.started);
            if let Err(e) = by_kind(repo, keys, &index, job, &m, o, &mut v).await {
                v.error = Some(e.to_string());
            }
        }
        Err(e) => v.error = Some(e.to_string()),
    }
    v.total_secs = t0.elapsed().as_secs_f64();
    if v.verify_secs == 0.0 {
        v.verify_secs = (v.total_secs - v.restore_secs).max(0.0);
    }
    v.ok = v.error.is_none() && !v.checks.is_empty() && v.checks.iter().all(|c| c.ok);
    if v.ok {
        tracing::info!(snapshot = ?v.snapshot, secs = v.total_secs, "verified");
    } else {
        tracing::warn!(snapshot = ?v.snapshot, "verification failed: {}", v.summary());
    }
    v
}

async fn by_kind(
    repo: &Repository,
    keys: &Keys,
    index: &Index,
    job: &JobSpec,
    m: &Manifest,
    o: &VerifyOptions,
    v: &mut Verification,
) -> Result<()> {
    let spec = job.verify.clone().unwrap_or_default();
    match (job.kind, m.source["mode"].as_str()) {
        (JobKind::Postgres, Some("physical")) => postgres_physical(repo, keys, index, m, &spec, o, v).await,
        (JobKind::Postgres, _) => postgres_logical(repo, keys, index, m, job, &spec, v).await,
        (JobKind::Redis, _) => redis(repo, keys, index, m, v).await,
        (JobKind::Kubernetes, _) => kubernetes(repo, keys, index, m, v).await,
        (JobKind::Etcd, _) => etcd(repo, keys, index, m, v).await,
        (JobKind::Command, _) => command(repo, keys, index, m, &spec, v).await,
    }
}

/// Every stream through a hashing sink (or the job's verify command).
async fn command(
    repo: &Repository,
    keys: &Keys,
    index: &Index,
    m: &Manifest,
    spec: &VerifySpec,
    v: &mut Verification,
) -> Result<()> {
    let t = Instant::now();
    for s in &m.streams {
        let written = if let Some(cmd) = &spec.command {
            let dir = ScratchDir::new("verify")?;
            let mut child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .current_dir(dir.path())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| Error::Other(format!("cannot run the verify command: {e}")))?;
            let stdin = child.stdin.take().ok_or_else(|| Error::Other("no stdin pipe".into()))?;
            let stdin = stdin.into_owned_fd().map_err(|e| Error::Other(e.to_string()))?;
            let r = restore_stream(repo, keys, index, &m.id, s, std::fs::File::from(stdin)).await;
            let out = child.wait_with_output().await.map_err(|e| Error::Other(e.to_string()))?;
            if out.status.success() {
                v.checks.push(Check::pass("verify command", format!("`{cmd}` accepted stream {}", s.name)));
            } else {
                v.checks.push(Check::fail(
                    "verify command",
                    format!(
                        "`{cmd}` failed on stream {} with {}{}",
                        s.name,
                        crate::source::describe(out.status),
                        crate::source::tail(&String::from_utf8_lossy(&out.stderr))
                    ),
                ));
            }
            r?
        } else {
            restore_stream(repo, keys, index, &m.id, s, std::io::sink()).await?
        };
        v.checks.push(if written == s.size {
            Check::pass("size", format!("stream {}: {written} bytes, every chunk authenticated", s.name))
        } else {
            Check::fail("size", format!("stream {}: restored {written} bytes, the manifest says {}", s.name, s.size))
        });
    }
    v.restore_secs = t.elapsed().as_secs_f64();
    Ok(())
}

/// Restore every database into a scratch server and compare with the fingerprint.
async fn postgres_logical(
    repo: &Repository,
    keys: &Keys,
    index: &Index,
    m: &Manifest,
    job: &JobSpec,
    spec: &VerifySpec,
    v: &mut Verification,
) -> Result<()> {
    let major = m.source["server_major"].as_u64().unwrap_or(15) as u32;
    let t = Instant::now();
    let (_scratch, url) = match &spec.target {
        Some(t) => (None, crate::policy::resolve_secret(t)?),
        None => {
            let bin = job.pg_bin.clone();
            let s = tokio::task::spawn_blocking(move || ScratchPostgres::start(major, bin.as_deref()))
                .await
                .map_err(|e| Error::Other(e.to_string()))??;
            let url = s.url();
            (Some(s), url)
        }
    };
    // Roles first, so that ownership in the dumps resolves; existing roles just report errors.
    if let Some(g) = m.streams.iter().find(|s| s.name == "globals.sql") {
        let target = pg::PgTarget::parse(&url)?;
        let tools = pg::Tools::find(job.pg_bin.as_deref(), major);
        let mut psql = tools.command("psql");
        psql.args(["-X", "-q", "-d", "postgres"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        target.tool_env(Some("postgres"))?.apply(&mut psql);
        let mut child = psql.spawn().map_err(|e| Error::Other(format!("cannot run psql: {e}")))?;
        let stdin = child.stdin.take().ok_or_else(|| Error::Other("no stdin pipe".into()))?;
        let r = restore_stream(repo, keys, index, &m.id, g, stdin).await;
        crate::source::wait(child, false).await?;
        r?;
    }
    let fps: Vec<pg::DatabaseFingerprint> = serde_json::from_value(m.source["databases"].clone()).unwrap_or_default();
    let dbs: Vec<String> = m.streams.iter().filter_map(|s| s.name.strip_prefix("db/").map(str::to_string)).collect();
    for db in &dbs {
        pg::restore_logical(repo, keys, index, m, &url, Some(db), true, 1).await?;
    }
    v.restore_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for db in &dbs {
        let Some(fp) = fps.iter().find(|f| &f.name == db) else {
            v.checks.push(Check::fail("fingerprint", format!("database {db}: the manifest has no fingerprint")));
            continue;
        };
        let now = pg::current_fingerprint(&url, db, fp.row_counts).await?;
        v.checks.push(compare_tables(db, &fp.tables, &now));
    }
    for a in &spec.asserts {
        let db = a.database.clone().or_else(|| dbs.first().cloned()).unwrap_or_else(|| "postgres".into());
        v.checks.push(sql_assert(&url, &db, a).await);
    }
    v.verify_secs = t.elapsed().as_secs_f64();
    Ok(())
}

fn compare_tables(db: &str, want: &[pg::TableFingerprint], got: &[pg::TableFingerprint]) -> Check {
    use std::collections::BTreeMap;
    let key = |t: &pg::TableFingerprint| format!("{}.{}", t.schema, t.name);
    let w: BTreeMap<String, Option<i64>> = want.iter().map(|t| (key(t), t.rows)).collect();
    let g: BTreeMap<String, Option<i64>> = got.iter().map(|t| (key(t), t.rows)).collect();
    let mut diffs = Vec::new();
    for (name, rows) in &w {
        match g.get(name) {
            None => diffs.push(format!("table {name} is missing")),
            Some(r) if rows.is_some() && r != rows => {
                diffs.push(format!("{name}: {} rows, expected {}", r.unwrap_or(0), rows.unwrap_or(0)))
            }
            _ => {}
        }
    }
    for name in g.keys().filter(|n| !w.contains_key(*n)) {
        diffs.push(format!("unexpected table {name}"));
    }
    let rows: i64 = want.iter().filter_map(|t| t.rows).sum();
    if diffs.is_empty() {
        Check::pass("fingerprint", format!("database {db}: {} tables, {rows} rows match the manifest", w.len()))
    } else {
        let n = diffs.len();
        diffs.truncate(5);
        Check::fail("fingerprint", format!("database {db}: {n} difference(s): {}", diffs.join("; ")))
    }
}

async fn sql_assert(url: &str, db: &str, a: &SqlAssert) -> Check {
    let expect = a.expect.clone().unwrap_or_else(|| "> 0".into());
    let name = "assertion";
    let r = async {
        let c = pg::PgTarget::parse(url)?.connect(Some(db)).await?;
        let msgs = c
            .simple_query(&a.sql)
            .await
            .map_err(|e| Error::Other(e.as_db_error().map(|d| d.message().to_string()).unwrap_or(e.to_string())))?;
        let value = msgs.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        });
        Ok::<_, Error>(value)
    }
    .await;
    match r {
        Ok(Some(value)) => match expectation_holds(&value, &expect) {
            Ok(true) => Check::pass(name, format!("{} → {value} ({expect})", a.sql)),
            Ok(false) => Check::fail(name, format!("{} → {value}, expected {expect}", a.sql)),
            Err(e) => Check::fail(name, format!("{}: {e}", a.sql)),
        },
        Ok(None) => Check::fail(name, format!("{} returned no rows", a.sql)),
        Err(e) => Check::fail(name, format!("{} failed in database {db}: {e}", a.sql)),
    }
}

/// Lay out the base backup, recover to the newest archived point, run the assertions.
async fn postgres_physical(
    repo: &Repository,
    keys: &Keys,
    index: &Index,
    m: &Manifest,
    spec: &VerifySpec,
    o: &VerifyOptions,
    v: &mut Verification,
) -> Result<()> {
    if is_root() {
        return Err(Error::Other(
            "PostgreSQL cannot run as root: verify physical backups as the postgres user (runuser -u postgres -- lifeboat verify …)".into(),
        ));
    }
    let identity = o
        .identity_file
        .clone()
        .ok_or_else(|| Error::NeedIdentity { action: "verifying a physical backup (restore_command)".into() })?;
    let dir = ScratchDir::new("verify-pg")?;
    let data = dir.path().join("data");
    let port = free_port()?;
    let pitr = pg::PitrOptions {
        at: None,
        lsn: None,
        start: true,
        port,
        exe: o.exe.clone(),
        repo_url: o.repo_url.clone(),
        identity,
        wait_secs: 3600,
    };
    let t = Instant::now();
    let stop = StopOnDrop { data: data.clone(), major: m.source["server_major"].as_u64().unwrap_or(15) as u32 };
    let r = pg::restore_physical(repo, keys, index, m, &data, &pitr).await?;
    v.restore_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let reached = r["newest_recoverable"].as_str().and_then(|s| s.parse::<chrono::DateTime<chrono::Utc>>().ok());
    v.recovered_to = reached;
    v.checks.push(Check::pass(
        "recovery",
        format!(
            "base backup + WAL up to {} replayed; the server promoted in {:.1}s",
            r["wal_last_segment"].as_str().unwrap_or("(base backup only)"),
            r["recovered_in_secs"].as_f64().unwrap_or(0.0)
        ),
    ));
    let url = format!("host={} port={port} user={} dbname=postgres", std::env::temp_dir().display(), pg::os_user());
    let dbs: Vec<String> = match pg::PgTarget::parse(&url)?.connect(None).await {
        Ok(c) => c
            .query("select datname::text from pg_database where datallowconn and not datistemplate order by 1", &[])
            .await
            .map_err(|e| Error::Other(e.to_string()))?
            .iter()
            .map(|r| r.get(0))
            .collect(),
        Err(e) => return Err(e),
    };
    v.checks
        .push(Check::pass("databases", format!("{} database(s) accept connections: {}", dbs.len(), dbs.join(", "))));
    for a in &spec.asserts {
        let db = a.database.clone().unwrap_or_else(|| "postgres".into());
        v.checks.push(sql_assert(&url, &db, a).await);
    }
    v.verify_secs = t.elapsed().as_secs_f64();
    drop(stop);
    Ok(())
}

/// Stops a recovered scratch cluster however verification ends.
struct StopOnDrop {
    data: PathBuf,
    major: u32,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if self.data.join("postmaster.pid").exists() {
            let _ = pg::Tools::find(None, self.major)
                .command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// Restore into throwaway redis-servers and compare key counts with the manifest.
async fn redis(repo: &Repository, keys: &Keys, index: &Index, m: &Manifest, v: &mut Verification) -> Result<()> {
    let logical = m.source["mode"].as_str() == Some("logical");
    let t = Instant::now();
    // Declared before the servers so that it outlives them (an RDB server runs in it).
    let dir = ScratchDir::new("verify-redis")?;
    let mut servers = Vec::new();
    if logical {
        let s = tokio::task::spawn_blocking(|| ScratchRedis::start(None))
            .await
            .map_err(|e| Error::Other(e.to_string()))??;
        let opts = rd::RestoreOptions { flush: false, force: false, stream: None };
        rd::restore(repo, keys, index, m, rd::RestoreTo::Server(&s.url()), &opts).await?;
        servers.push(s);
    } else {
        let opts = rd::RestoreOptions { flush: false, force: true, stream: None };
        rd::restore(repo, keys, index, m, rd::RestoreTo::Dir(dir.path()), &opts).await?;
        // One dump.rdb, or one subdirectory per cluster shard.
        let mut dirs = vec![dir.path().to_path_buf()];
        if !dir.path().join("dump.rdb").exists() {
            dirs = std::fs::read_dir(dir.path())
                .map_err(Error::Output)?
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.join("dump.rdb").exists())
                .collect();
        }
        for d in dirs {
            let s = tokio::task::spawn_blocking(move || ScratchRedis::start(Some(&d)))
                .await
                .map_err(|e| Error::Other(e.to_string()))??;
            servers.push(s);
        }
    }
    v.restore_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let counts = count_keys(&servers).await?;
    compare_redis(m, &counts, logical, v);
    v.verify_secs = t.elapsed().as_secs_f64();
    Ok(())
}

/// A Kubernetes export: every object parses and the dependency-ordered plan covers them all.
async fn kubernetes(repo: &Repository, keys: &Keys, index: &Index, m: &Manifest, v: &mut Verification) -> Result<()> {
    use crate::source::kubernetes as k8s;
    let t = Instant::now();
    let plan = k8s::read_plan(repo, keys, index, m, &k8s::RestoreFilter::default()).await?;
    v.restore_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    v.checks.push(if plan.errors.is_empty() {
        Check::pass("parse", format!("{} objects parse", plan.objects.len()))
    } else {
        let first: Vec<String> = plan.errors.iter().take(3).map(|e| format!("{}: {}", e.object, e.detail)).collect();
        Check::fail("parse", format!("{} object(s) do not parse: {}", plan.errors.len(), first.join("; ")))
    });
    let exported = m.source["objects"].as_u64();
    let planned = (plan.objects.len() + plan.errors.len()) as u64;
    v.checks.push(match exported {
        Some(n) if n == planned => {
            Check::pass("plan", format!("{} objects in dependency order, as many as were exported", plan.objects.len()))
        }
        Some(n) => Check::fail("plan", format!("the snapshot holds {planned} objects, the export recorded {n}")),
        None => Check::pass("plan", format!("{} objects in dependency order", plan.objects.len())),
    });
    v.verify_secs = t.elapsed().as_secs_f64();
    Ok(())
}

/// An etcd snapshot: restore a data dir, start a temporary member from it, count keys.
async fn etcd(repo: &Repository, keys: &Keys, index: &Index, m: &Manifest, v: &mut Verification) -> Result<()> {
    use crate::source::etcd as e;
    let dir = ScratchDir::new("verify-etcd")?;
    let data = dir.path().join("member");
    let t = Instant::now();
    e::restore_to_dir(repo, keys, index, m, &data, &e::DataDirOptions::default()).await?;
    v.restore_secs = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let got = e::check_data_dir(&data, &e::DataDirOptions::default().name).await?;
    v.checks
        .push(Check::pass("member", format!("a temporary etcd {} started from the restored data dir", got.version)));
    let (want_keys, want_rev) = (m.source["keys"].as_i64(), m.source["revision"].as_i64().unwrap_or(0));
    // Keys and revision are read just before the snapshot: later writes may add to both.
    v.checks.push(match want_keys {
        Some(k) if k == got.keys => Check::pass("keys", format!("{k} keys at revision {}, as recorded", got.revision)),
        Some(k) if got.revision > want_rev => Check::pass(
            "keys",
            format!(
                "{} keys at revision {} (recorded {k} at {want_rev}: writes during the snapshot)",
                got.keys, got.revision
            ),
        ),
        Some(k) => Check::fail("keys", format!("restored {} keys, the snapshot recorded {k}", got.keys)),
        None => Check::pass("keys", format!("{} keys at revision {}", got.keys, got.revision)),
    });
    v.checks.push(if got.revision >= want_rev {
        Check::pass("revision", format!("revision {} ≥ recorded {want_rev}", got.revision))
    } else {
        Check::fail("revision", format!("revision {} is older than the recorded {want_rev}", got.revision))
    });
    v.verify_secs = t.elapsed().as_secs_f64();
    Ok(())
}

/// Keys per database and per type on the scratch servers.
#[derive(Debug, Default)]
struct RedisCounts {
    by_db: std::collections::BTreeMap<String, u64>,
    by_type: std::collections::BTreeMap<String, u64>,
}

async fn count_keys(servers: &[ScratchRedis]) -> Result<RedisCounts> {
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    tokio::task::spawn_blocking(move || {
        let mut out = RedisCounts::default();
        let err = |e: redis::RedisError| Error::Other(format!("scratch redis-server: {e}"));
        for url in urls {
            let client = redis::Client::open(url.as_str()).map_err(err)?;
            let mut con = client.get_connection().map_err(err)?;
            let info: String = redis::cmd("INFO").arg("keyspace").query(&mut con).map_err(err)?;
            for line in info.lines() {
                let Some((db, rest)) = line.trim().split_once(':') else { continue };
                let Some(n) =
                    rest.split(',').find_map(|kv| kv.strip_prefix("keys=")).and_then(|n| n.parse::<u64>().ok())
                else {
                    continue;
                };
                *out.by_db.entry(db.to_string()).or_default() += n;
                let dbn: i64 = db.trim_start_matches("db").parse().unwrap_or(0);
                redis::cmd("SELECT").arg(dbn).query::<()>(&mut con).map_err(err)?;
                let mut cursor: u64 = 0;
                loop {
                    let (next, keys): (u64, Vec<Vec<u8>>) =
                        redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).query(&mut con).map_err(err)?;
                    let mut p = redis::pipe();
                    for k in &keys {
                        p.cmd("TYPE").arg(k);
                    }
                    let types: Vec<String> = p.query(&mut con).map_err(err)?;
                    for t in types {
                        *out.by_type.entry(t).or_default() += 1;
                    }
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::Other(e.to_string()))?
}

fn compare_redis(m: &Manifest, got: &RedisCounts, logical: bool, v: &mut Verification) {
    use std::collections::BTreeMap;
    // Logical snapshots count keys as they are written to the stream (exact); RDB
    // snapshots carry the server's INFO keyspace, summed over shards.
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    if logical {
        if let Some(o) = m.source["keys_by_db"].as_object() {
            for (db, n) in o {
                let db = if db.starts_with("db") { db.clone() } else { format!("db{db}") };
                want.insert(db, n.as_u64().unwrap_or(0));
            }
        }
    } else {
        let shards = m.source["shards"].as_array().cloned().unwrap_or_default();
        let spaces: Vec<serde_json::Value> = if shards.is_empty() {
            vec![m.source["keyspace"].clone()]
        } else {
            shards.iter().map(|s| s["keyspace"].clone()).collect()
        };
        for ks in spaces {
            for (db, k) in ks.as_object().cloned().unwrap_or_default() {
                *want.entry(db).or_default() += k["keys"].as_u64().unwrap_or(0);
            }
        }
    }
    want.retain(|_, n| *n > 0);
    let total: u64 = got.by_db.values().sum();
    v.checks.push(if want == got.by_db {
        Check::pass("keys per database", format!("{total} keys in {} database(s) match the manifest", want.len()))
    } else {
        Check::fail("keys per database", format!("restored {:?}, the manifest says {:?}", got.by_db, want))
    });
    if logical {
        let want: BTreeMap<String, u64> = m.source["keys_by_type"]
            .as_object()
            .map(|o| o.iter().map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0))).collect())
            .unwrap_or_default();
        v.checks.push(if want == got.by_type {
            Check::pass("keys per type", format!("{:?}", got.by_type))
        } else {
            Check::fail("keys per type", format!("restored {:?}, the manifest says {:?}", got.by_type, want))
        });
    } else {
        v.checks
            .push(Check::pass("rdb", format!("redis-server loaded the restored RDB; keys per type {:?}", got.by_type)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations() {
        assert_eq!(expectation_holds("3", "> 0"), Ok(true));
        assert_eq!(expectation_holds("0", "> 0"), Ok(false));
        assert_eq!(expectation_holds("5", "= 5"), Ok(true));
        assert_eq!(expectation_holds("5", ">= 6"), Ok(false));
        assert_eq!(expectation_holds("t", "true"), Ok(true));
        assert_eq!(expectation_holds("f", "true"), Ok(false));
        assert!(expectation_holds("abc", "> 0").is_err());
        assert!(expectation_holds("1", "about 3").is_err());
    }
}
