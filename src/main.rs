//! The `lifeboat` command line: a thin layer over the library.
//!
//! Exit codes: 0 success, 1 failure, 2 usage error (or a command that is not
//! implemented yet).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use lifeboat::crypto::{self, Identities, WriteCredential};
use lifeboat::pipeline::{BackupOptions, BackupSession, restore_stream};
use lifeboat::policy::{JobKind, Policy};
use lifeboat::repo::{InitOptions, Keys, Manifest, Repository};
use lifeboat::source::postgres as pg;
use lifeboat::source::redis as rd;
use lifeboat::source::wal;
use lifeboat::storage::RepoUrl;

const AFTER_HELP: &str = "\
Getting started:
  lifeboat key generate --output lifeboat.key          # the restore identity: keep it offline
  lifeboat init --repo /srv/backups --recipient age1… --write-key-out write.key
  pg_dump mydb | lifeboat backup --repo /srv/backups --write-key write.key --stdin --name mydb
  lifeboat snapshots --repo /srv/backups --identity lifeboat.key
  lifeboat restore --repo /srv/backups --identity lifeboat.key latest --name mydb --to mydb.sql

Environment: LIFEBOAT_REPO, LIFEBOAT_IDENTITY_FILE, LIFEBOAT_WRITE_KEY_FILE, LIFEBOAT_LOG.";

#[derive(Parser)]
#[command(name = "lifeboat", version, about = "Encrypted, deduplicated, replicated backups for PostgreSQL, Redis and Kubernetes — with restores you have proven.", after_help = AFTER_HELP)]
struct Cli {
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// More logging (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Clone)]
struct RepoArg {
    /// Repository: a path, file:///path, or s3://bucket/prefix?region=…&endpoint=….
    #[arg(long, env = "LIFEBOAT_REPO", value_parser = parse_repo)]
    repo: RepoUrl,
}

#[derive(Args, Clone, Default)]
struct IdentityArg {
    /// age identity file (the restore key).
    #[arg(long, env = "LIFEBOAT_IDENTITY_FILE")]
    identity: Option<PathBuf>,
}

fn parse_repo(s: &str) -> std::result::Result<RepoUrl, String> {
    s.parse::<RepoUrl>().map_err(|e| e.reason)
}

#[derive(Subcommand)]
enum Cmd {
    /// Keys: the restore identity and write credentials.
    #[command(subcommand)]
    Key(KeyCmd),
    /// Create a new repository.
    Init(InitArgs),
    /// Back up standard input, or one job of a policy.
    Backup(BackupArgs),
    /// Back up one policy job, replicate, apply retention, report metrics (what a CronJob runs).
    Run(PolicyJobArgs),
    /// Run every policy job on its cron schedule.
    Daemon(PolicyArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// Restore a snapshot.
    Restore(RestoreArgs),
    /// Check repository integrity (with --read-data: every byte).
    Check(CheckArgs),
    /// Remove snapshots according to retention rules.
    Forget(PolicyArgs),
    /// Delete data no snapshot references.
    Prune(RepoOnly),
    /// Copy snapshots to the replica repositories of a policy.
    Replicate(PolicyArgs),
    /// Newest snapshot and newest recoverable point per job.
    Status(StatusArgs),
    /// PostgreSQL WAL archiving (archive_command / restore_command).
    #[command(subcommand)]
    Wal(WalCmd),
    /// Restore a snapshot into a scratch target and check it.
    Verify(PolicyJobArgs),
    /// Run a timed disaster-recovery drill.
    Drill(DrillArgs),
    /// Write the monthly DR drill report.
    Report(ReportArgs),
    /// Policy files.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Kubernetes manifests.
    #[command(subcommand)]
    Deploy(DeployCmd),
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Create a new age identity; prints its recipient (age1…).
    Generate {
        /// Write the identity here (mode 0600; never overwritten). Without it the identity goes to stdout.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Issue a write credential for a repository (needs the identity).
    WriteCredential {
        #[command(flatten)]
        repo: RepoArg,
        #[command(flatten)]
        identity: IdentityArg,
        /// Where to write the credential (mode 0600; never overwritten).
        #[arg(long)]
        output: PathBuf,
    },
}

#[derive(Args)]
struct InitArgs {
    #[command(flatten)]
    repo: RepoArg,
    /// age recipient (age1…) that can decrypt the repository; repeatable.
    #[arg(long = "recipient", required = true)]
    recipients: Vec<String>,
    /// Write the write credential (for backup jobs) to this file.
    #[arg(long)]
    write_key_out: Option<PathBuf>,
    /// zstd level for chunks (1-19).
    #[arg(long, default_value_t = 3)]
    compression_level: i32,
    /// Average chunk size (e.g. 1M, 256K); min is a quarter, max four times. See docs/FORMAT.md.
    #[arg(long, value_parser = parse_size, default_value = "1M")]
    chunk_size: u32,
    /// Target pack size (e.g. 16M).
    #[arg(long, value_parser = parse_size, default_value = "16M")]
    pack_size: u32,
}

fn parse_time(s: &str) -> std::result::Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%#z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(s, f) {
            return Ok(t.with_timezone(&chrono::Utc));
        }
    }
    for f in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, f) {
            return Ok(t.and_utc());
        }
    }
    Err(format!("{s:?} is not a time; use RFC 3339 like 2026-11-21T03:00:00Z (UTC when no offset is given)"))
}

fn parse_size(s: &str) -> std::result::Result<u32, String> {
    let t = s.trim().trim_end_matches("iB").trim_end_matches('B');
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1024u64),
        Some('M' | 'm') => (&t[..t.len() - 1], 1024 * 1024),
        Some('G' | 'g') => (&t[..t.len() - 1], 1024 * 1024 * 1024),
        _ => (t, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size like 512K or 4M"))?;
    u32::try_from(n * mult).map_err(|_| format!("{s} is too large"))
}

#[derive(Args)]
struct BackupArgs {
    /// Repository (default with --policy: its first repository).
    #[arg(long, env = "LIFEBOAT_REPO", value_parser = parse_repo)]
    repo: Option<RepoUrl>,
    /// Back up standard input.
    #[arg(long, requires = "name", conflicts_with = "policy")]
    stdin: bool,
    /// Snapshot name (with --stdin).
    #[arg(long)]
    name: Option<String>,
    /// Tag the snapshot; repeatable.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Policy file (with JOB).
    #[arg(long, requires = "job")]
    policy: Option<PathBuf>,
    /// Job name in the policy.
    job: Option<String>,
    /// Write credential file (can add snapshots, cannot read them).
    #[arg(long, env = "LIFEBOAT_WRITE_KEY_FILE")]
    write_key: Option<PathBuf>,
    #[command(flatten)]
    identity: IdentityArg,
}

#[derive(Args)]
struct PolicyArgs {
    #[arg(long)]
    policy: PathBuf,
}

#[derive(Args)]
struct StatusArgs {
    #[arg(long)]
    policy: PathBuf,
    #[command(flatten)]
    identity: IdentityArg,
}

#[derive(Args)]
struct PolicyJobArgs {
    #[arg(long)]
    policy: PathBuf,
    job: String,
}

#[derive(Args)]
struct RepoOnly {
    #[command(flatten)]
    repo: RepoArg,
}

#[derive(Args)]
struct SnapshotsArgs {
    #[command(flatten)]
    repo: RepoArg,
    #[command(flatten)]
    identity: IdentityArg,
    /// Only snapshots with this name.
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args)]
struct RestoreArgs {
    #[command(flatten)]
    repo: RepoArg,
    #[command(flatten)]
    identity: IdentityArg,
    /// Snapshot id, unique id prefix, or `latest`.
    snapshot: String,
    /// With `latest`: the newest snapshot of this name.
    #[arg(long)]
    name: Option<String>,
    /// Which stream of a multi-stream snapshot.
    #[arg(long)]
    stream: Option<String>,
    /// `-` (stdout), a file path (written atomically, never replaced without --force),
    /// or a database: `postgres://user@host/db`, `redis://[user:pass@]host:port` (a server or a
    /// cluster node), or `env:NAME` holding such a URL (keeps the password out of the process list).
    #[arg(long, required_unless_present_any = ["to_command", "to_dir"], conflicts_with_all = ["to_command", "to_dir"])]
    to: Option<String>,
    /// PostgreSQL physical snapshot: lay out a data directory here and configure recovery from the WAL archive.
    /// Redis RDB snapshot: write DIR/dump.rdb for a stopped server (one subdirectory per shard of a cluster).
    #[arg(long, conflicts_with = "to_command")]
    to_dir: Option<PathBuf>,
    /// Point in time to recover to (RFC 3339, e.g. 2026-11-21T03:00:00Z); default: the newest archived WAL.
    #[arg(long, requires = "to_dir", value_parser = parse_time, conflicts_with = "lsn")]
    at: Option<chrono::DateTime<chrono::Utc>>,
    /// Recover up to this LSN instead of a time.
    #[arg(long, requires = "to_dir")]
    lsn: Option<String>,
    /// With --to-dir: start the server and wait until recovery has finished.
    #[arg(long, requires = "to_dir")]
    start: bool,
    /// With --start: the port the restored server listens on (127.0.0.1).
    #[arg(long, default_value_t = 5433)]
    port: u16,
    /// With --start: how long to wait for recovery, in seconds.
    #[arg(long, default_value_t = 3600)]
    wait: u64,
    /// PostgreSQL: which database of a multi-database snapshot.
    #[arg(long)]
    database: Option<String>,
    /// PostgreSQL: drop and recreate a non-empty target database.
    #[arg(long)]
    clean: bool,
    /// PostgreSQL: parallel pg_restore jobs (stages the dump in a temp file).
    #[arg(long, default_value_t = 1)]
    jobs: u32,
    /// Pipe the stream into `sh -c COMMAND` (e.g. "tar -C /restore -x").
    #[arg(long)]
    to_command: Option<String>,
    /// Replace an existing file.
    #[arg(long)]
    force: bool,
    /// Redis: restore into a non-empty server or cluster by deleting every key first (FLUSHALL).
    #[arg(long)]
    flush: bool,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    repo: RepoArg,
    #[command(flatten)]
    identity: IdentityArg,
    /// Download, decrypt and re-hash every chunk.
    #[arg(long)]
    read_data: bool,
}

#[derive(Subcommand)]
enum WalCmd {
    /// Archive one WAL file: archive_command = 'lifeboat wal push --archive JOB %p'.
    /// Idempotent for an identical file; refuses a different file under the same name.
    Push {
        path: PathBuf,
        #[command(flatten)]
        repo: RepoArg,
        /// WAL archive name (the policy job name); one per PostgreSQL cluster.
        #[arg(long, default_value = "postgres")]
        archive: String,
        #[arg(long, env = "LIFEBOAT_WRITE_KEY_FILE")]
        write_key: Option<PathBuf>,
        #[command(flatten)]
        identity: IdentityArg,
    },
    /// Fetch one WAL file: restore_command = 'lifeboat wal fetch --archive JOB %f %p'.
    Fetch {
        name: String,
        dest: PathBuf,
        #[command(flatten)]
        repo: RepoArg,
        #[arg(long, default_value = "postgres")]
        archive: String,
        #[command(flatten)]
        identity: IdentityArg,
    },
    /// List archived WAL files and how far recovery can reach.
    List {
        #[command(flatten)]
        repo: RepoArg,
        #[arg(long, default_value = "postgres")]
        archive: String,
    },
}

#[derive(Args)]
struct DrillArgs {
    #[arg(long)]
    policy: PathBuf,
    #[arg(long)]
    scenario: Option<String>,
}

#[derive(Args)]
struct ReportArgs {
    #[arg(long)]
    month: String,
    #[arg(long, value_parser = ["html", "md", "json"], default_value = "html")]
    format: String,
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate a policy file.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum DeployCmd {
    /// Render Kubernetes CronJobs for a policy.
    Render(PolicyArgs),
}

/// A command whose issue has not landed yet: exit 2, say so.
struct NotYet(&'static str);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    init_logging(&cli);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json = cli.json;
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            if let Some(NotYet(what)) = e.downcast_ref::<NotYet>() {
                eprintln!("error: `lifeboat {what}` is not implemented yet in this version");
                return ExitCode::from(2);
            }
            if json {
                let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
                println!("{}", serde_json::json!({ "ok": false, "error": chain.join(": ") }));
            }
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(1)
        }
    }
}

impl std::fmt::Debug for NotYet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not yet implemented: {}", self.0)
    }
}
impl std::fmt::Display for NotYet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`lifeboat {}` is not implemented yet", self.0)
    }
}
impl std::error::Error for NotYet {}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let default = match cli.verbose {
        0 => "warn",
        1 => "lifeboat=info,warn",
        _ => "lifeboat=debug,info",
    };
    let filter = EnvFilter::try_from_env("LIFEBOAT_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => b.json().init(),
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let json = cli.json;
    match cli.command {
        Cmd::Key(KeyCmd::Generate { output }) => key_generate(output, json),
        Cmd::Key(KeyCmd::WriteCredential { repo, identity, output }) => {
            let r = Repository::open(&repo.repo).await?;
            let ids = load_identity(&identity)?;
            let dedup = r.dedup_key_with(&ids).await?;
            let cred = WriteCredential::new(&r.config.id, &dedup, &r.config.recipients);
            crypto::write_secret_file(&output, &cred.to_json())
                .with_context(|| format!("cannot write {}", output.display()))?;
            eprintln!("write credential for repository {} written to {}", r.config.id, output.display());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Init(a) => init(a, json).await,
        Cmd::Backup(a) => backup(a, json).await,
        Cmd::Snapshots(a) => snapshots(a, json).await,
        Cmd::Restore(a) => restore(a, json).await,
        Cmd::Check(a) => check(a, json).await,
        Cmd::Policy(PolicyCmd::Check { file }) => {
            let p = Policy::load(&file)?;
            if json {
                println!("{}", serde_json::json!({"ok": true, "repositories": p.repositories.len(), "jobs": p.jobs.len()}));
            } else {
                println!("{}: OK ({} repositories, {} jobs)", file.display(), p.repositories.len(), p.jobs.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run(_) => Err(NotYet("run").into()),
        Cmd::Daemon(_) => Err(NotYet("daemon").into()),
        Cmd::Forget(_) => Err(NotYet("forget").into()),
        Cmd::Prune(_) => Err(NotYet("prune").into()),
        Cmd::Replicate(_) => Err(NotYet("replicate").into()),
        Cmd::Status(a) => status(a, json).await,
        Cmd::Wal(w) => wal_cmd(w, json).await,
        Cmd::Verify(_) => Err(NotYet("verify").into()),
        Cmd::Drill(_) => Err(NotYet("drill").into()),
        Cmd::Report(_) => Err(NotYet("report").into()),
        Cmd::Deploy(_) => Err(NotYet("deploy render").into()),
    }
}

fn key_generate(output: Option<PathBuf>, json: bool) -> Result<ExitCode> {
    let (text, recipient) = crypto::generate_identity();
    match output {
        Some(path) => {
            crypto::write_secret_file(&path, &text).with_context(|| {
                format!("cannot write {} (an existing key is never overwritten)", path.display())
            })?;
            if json {
                println!("{}", serde_json::json!({"recipient": recipient, "identity_file": path}));
            } else {
                println!("{recipient}");
                eprintln!("identity written to {}; keep it safe and offline: it is the only way to restore", path.display());
            }
        }
        None => {
            print!("{text}");
            eprintln!("Public key: {recipient}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load_identity(arg: &IdentityArg) -> Result<Identities> {
    let path = arg.identity.as_ref().ok_or(lifeboat::Error::NeedIdentity { action: "this command".into() })?;
    Ok(Identities::from_file(path)?)
}

/// Keys for a command that only writes: the write credential if given, else the identity.
async fn write_keys(repo: &Repository, write_key: Option<&Path>, identity: &IdentityArg) -> Result<Keys> {
    if let Some(p) = write_key {
        let cred = WriteCredential::from_file(p)?;
        return Ok(repo.unlock_write(&cred)?);
    }
    if identity.identity.is_some() {
        return Ok(repo.unlock_identity(load_identity(identity)?).await?);
    }
    Err(lifeboat::Error::NoKey.into())
}

async fn read_keys(repo: &Repository, identity: &IdentityArg, action: &str) -> Result<Keys> {
    if identity.identity.is_none() {
        return Err(lifeboat::Error::NeedIdentity { action: action.into() }.into());
    }
    Ok(repo.unlock_identity(load_identity(identity)?).await?)
}

async fn init(a: InitArgs, json: bool) -> Result<ExitCode> {
    if let Some(p) = &a.write_key_out {
        if p.exists() {
            bail!("{} already exists; refusing to overwrite a credential", p.display());
        }
    }
    let chunker = lifeboat::chunker::ChunkerParams {
        min_size: (a.chunk_size / 4).max(64),
        avg_size: a.chunk_size,
        max_size: a.chunk_size.saturating_mul(4),
    };
    let opts = InitOptions {
        recipients: a.recipients,
        compression_level: a.compression_level,
        chunker,
        pack_size: a.pack_size,
    };
    let (repo, cred) = Repository::init(&a.repo.repo, opts).await?;
    if let Some(p) = &a.write_key_out {
        crypto::write_secret_file(p, &cred.to_json()).with_context(|| format!("cannot write {}", p.display()))?;
    }
    if json {
        println!("{}", serde_json::json!({"repository_id": repo.config.id, "url": repo.url, "write_key": a.write_key_out}));
    } else {
        println!("created repository {} at {}", repo.config.id, repo.url);
        match &a.write_key_out {
            Some(p) => println!("write credential (for backup jobs) written to {}", p.display()),
            None => println!("issue a write credential for backup jobs with `lifeboat key write-credential`"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn backup(a: BackupArgs, json: bool) -> Result<ExitCode> {
    let manifest = if let Some(policy_path) = &a.policy {
        let policy = Policy::load(policy_path)?;
        let job_name = a.job.as_deref().unwrap_or_default();
        let job = policy.job(job_name)?.clone();
        let url = match &a.repo {
            Some(u) => u.clone(),
            None => policy.primary()?,
        };
        let repo = Repository::open(&url).await?;
        let keys = write_keys(&repo, a.write_key.as_deref(), &a.identity).await?;
        let mut tags = job.tags.clone();
        tags.extend(a.tags.iter().cloned());
        let opts = BackupOptions { name: job.name.clone(), kind: job.kind.as_str().into(), tags };
        let _span = tracing::info_span!("job", job = %job.name).entered();
        match job.kind {
            JobKind::Command => {
                let mut session = BackupSession::start(&repo, &keys, opts).await?;
                let command = job.command.as_deref().unwrap_or_default();
                let meta = lifeboat::source::backup_command(&mut session, &job.name, command).await?;
                session.commit(meta).await?
            }
            JobKind::Postgres => {
                let conn = job.connection()?;
                let mut session = BackupSession::start(&repo, &keys, opts).await?;
                let meta = match job.mode.as_deref().unwrap_or("logical") {
                    "physical" => pg::backup_physical(&mut session, &job.name, &conn, &job.pg_options()).await?,
                    _ => pg::backup_logical(&mut session, &job.name, &conn, &job.pg_options()).await?,
                };
                session.commit(meta).await?
            }
            JobKind::Redis => {
                let conn = job.connection()?;
                let mut session = BackupSession::start(&repo, &keys, opts).await?;
                let meta = rd::backup(&mut session, &job.name, &conn, job.mode.as_deref().unwrap_or("rdb")).await?;
                session.commit(meta).await?
            }
            other => return Err(NotYet(match other {
                JobKind::Kubernetes => "backup (kubernetes jobs)",
                _ => "backup (etcd jobs)",
            })
            .into()),
        }
    } else if a.stdin {
        let url = a.repo.clone().ok_or_else(|| anyhow::anyhow!("--repo (or LIFEBOAT_REPO) is required"))?;
        let repo = Repository::open(&url).await?;
        let keys = write_keys(&repo, a.write_key.as_deref(), &a.identity).await?;
        let name = a.name.clone().unwrap_or_default();
        let opts = BackupOptions { name, kind: "stdin".into(), tags: a.tags.clone() };
        let mut session = BackupSession::start(&repo, &keys, opts).await?;
        session.add_stream("stdin", lifeboat::source::stdin()).await?;
        session.commit(serde_json::Value::Null).await?
    } else {
        eprintln!("error: give --stdin --name NAME, or --policy FILE JOB");
        return Ok(ExitCode::from(2));
    };
    let s = &manifest.stats;
    if json {
        println!(
            "{}",
            serde_json::json!({"id": manifest.id, "name": manifest.name, "stats": s, "started": manifest.started, "finished": manifest.finished})
        );
    } else {
        println!("{}", manifest.id);
        eprintln!(
            "snapshot {} of {}: {} read, {} new ({} stored) in {:.1}s",
            manifest.short_id(),
            manifest.name,
            human(s.bytes_read),
            human(s.bytes_new_raw),
            human(s.bytes_new_stored),
            s.duration_secs
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 { format!("{n} B") } else { format!("{v:.1} {}", U[i]) }
}

async fn snapshots(a: SnapshotsArgs, json: bool) -> Result<ExitCode> {
    let repo = Repository::open(&a.repo.repo).await?;
    let keys = read_keys(&repo, &a.identity, "listing snapshots").await?;
    let list: Vec<Manifest> =
        repo.manifests(&keys).await?.into_iter().filter(|m| a.name.as_ref().is_none_or(|n| &m.name == n)).collect();
    if json {
        let rows: Vec<serde_json::Value> = list
            .iter()
            .map(|m| {
                serde_json::json!({"id": m.id, "name": m.name, "kind": m.kind, "tags": m.tags, "hostname": m.hostname,
                    "started": m.started, "finished": m.finished, "size": m.total_size(),
                    "streams": m.streams.iter().map(|s| serde_json::json!({"name": s.name, "size": s.size})).collect::<Vec<_>>(),
                    "stats": m.stats, "source": m.source})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if list.is_empty() {
        println!("no snapshots in {}", repo.url);
    } else {
        println!("{:<10} {:<20} {:<24} {:<8} {:>10}  tags", "id", "time (UTC)", "name", "kind", "size");
        for m in &list {
            println!(
                "{:<10} {:<20} {:<24} {:<8} {:>10}  {}",
                m.short_id(),
                m.started.format("%Y-%m-%d %H:%M:%S"),
                m.name,
                m.kind,
                human(m.total_size()),
                m.tags.join(",")
            );
        }
        println!("{} snapshot(s)", list.len());
    }
    Ok(ExitCode::SUCCESS)
}

async fn restore(a: RestoreArgs, json: bool) -> Result<ExitCode> {
    let repo = Repository::open(&a.repo.repo).await?;
    let keys = read_keys(&repo, &a.identity, "restoring").await?;
    let manifest = repo.find_snapshot(&keys, &a.snapshot, a.name.as_deref()).await?;
    if manifest.kind == "redis" {
        if let Some(code) = restore_redis(&a, &repo, &keys, &manifest, json).await? {
            return Ok(code);
        }
    }
    let wanted = a.stream.clone().or_else(|| a.database.as_ref().map(|d| format!("db/{d}")));
    let is_db_target = a.to_dir.is_some() || a.to.as_deref().is_some_and(|t| t.starts_with("postgres") || t.starts_with("env:"));
    let stream = match &wanted {
        _ if is_db_target => &manifest.streams[0],
        Some(s) => manifest
            .streams
            .iter()
            .find(|x| &x.name == s)
            .ok_or_else(|| anyhow::anyhow!("snapshot {} has no stream {s:?}", manifest.short_id()))?,
        None if manifest.streams.len() == 1 => &manifest.streams[0],
        None => {
            return Err(lifeboat::Error::AmbiguousStream {
                snapshot: manifest.short_id().into(),
                streams: manifest.streams.len(),
                names: manifest.streams.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
            }
            .into());
        }
    };
    let index = repo.load_index(&keys).await?;
    let started = std::time::Instant::now();
    if let Some(dir) = &a.to_dir {
        let identity = std::fs::canonicalize(a.identity.identity.as_ref().expect("checked by read_keys"))?;
        let o = pg::PitrOptions {
            at: a.at,
            lsn: a.lsn.clone(),
            start: a.start,
            port: a.port,
            exe: std::env::current_exe()?,
            repo_url: a.repo.repo.to_string(),
            identity,
            wait_secs: a.wait,
        };
        let r = pg::restore_physical(&repo, &keys, &index, &manifest, dir, &o).await?;
        if json {
            println!("{}", serde_json::json!({"id": manifest.id, "result": r, "seconds": started.elapsed().as_secs_f64()}));
        } else {
            eprintln!(
                "restored base backup {} into {}; recovery {} (newest recoverable point {})",
                manifest.short_id(),
                dir.display(),
                if a.start { "finished, server running" } else { "configured: start the server to recover" },
                r["newest_recoverable"].as_str().unwrap_or("?")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(to) = a.to.as_deref().filter(|t| t.starts_with("postgres://") || t.starts_with("postgresql://") || t.starts_with("env:")) {
        if to.starts_with("postgres") && pg::redact(to) != to {
            eprintln!("warning: a password in --to is visible in the process list; use --to env:NAME");
        }
        let conn = if to.starts_with("env:") { lifeboat::policy::resolve_secret(to)? } else { to.to_string() };
        let db = a.database.clone().or_else(|| a.stream.as_ref().and_then(|s| s.strip_prefix("db/").map(str::to_string)));
        let r = pg::restore_logical(&repo, &keys, &index, &manifest, &conn, db.as_deref(), a.clean, a.jobs).await?;
        if json {
            println!("{}", serde_json::json!({"id": manifest.id, "result": r}));
        } else {
            eprintln!(
                "restored database {} of snapshot {} into {} in {:.1}s",
                r["source_database"].as_str().unwrap_or("?"),
                manifest.short_id(),
                r["database"].as_str().unwrap_or("?"),
                started.elapsed().as_secs_f64()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let written = if let Some(cmd) = &a.to_command {
        let mut child = lifeboat::source::spawn_restore_command(cmd)?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("no stdin pipe"))?;
        let r = restore_stream(&repo, &keys, &index, &manifest.id, stream, stdin).await;
        lifeboat::source::finish_restore_command(child).await?;
        r?
    } else {
        match a.to.as_deref() {
            Some("-") => restore_stream(&repo, &keys, &index, &manifest.id, stream, std::io::stdout()).await?,
            Some(path) => {
                let path = PathBuf::from(path);
                if path.exists() && !a.force {
                    bail!("{} exists; pass --force to replace it", path.display());
                }
                let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let tmp = tempfile_in(dir)?;
                let file = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
                let r = restore_stream(&repo, &keys, &index, &manifest.id, stream, SyncOnDrop(file)).await;
                match r {
                    Ok(n) => {
                        std::fs::rename(&tmp, &path).with_context(|| format!("cannot move into {}", path.display()))?;
                        n
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e.into());
                    }
                }
            }
            None => bail!("give --to, --to-dir or --to-command"),
        }
    };
    let secs = started.elapsed().as_secs_f64();
    if json {
        println!("{}", serde_json::json!({"id": manifest.id, "stream": stream.name, "bytes": written, "seconds": secs}));
    } else {
        eprintln!("restored {} of snapshot {} ({}) in {:.1}s", human(written), manifest.short_id(), manifest.name, secs);
    }
    Ok(ExitCode::SUCCESS)
}

/// A Redis snapshot into a server/cluster (`--to redis://…|env:NAME`) or a
/// data dir (`--to-dir`); `None` when the target is a plain file or stdout.
async fn restore_redis(a: &RestoreArgs, repo: &Repository, keys: &Keys, manifest: &Manifest, json: bool) -> Result<Option<ExitCode>> {
    let to_server = a.to.as_deref().filter(|t| {
        ["redis://", "rediss://", "unix://", "redis+unix://", "env:"].iter().any(|p| t.starts_with(p))
    });
    if to_server.is_none() && a.to_dir.is_none() {
        return Ok(None);
    }
    let index = repo.load_index(keys).await?;
    let opts = rd::RestoreOptions { flush: a.flush, force: a.force, stream: a.stream.as_deref() };
    let started = std::time::Instant::now();
    let r = if let Some(dir) = &a.to_dir {
        rd::restore(repo, keys, &index, manifest, rd::RestoreTo::Dir(dir), &opts).await?
    } else {
        let to = to_server.expect("checked above");
        if !to.starts_with("env:") && rd::redact(to) != to {
            eprintln!("warning: a password in --to is visible in the process list; use --to env:NAME");
        }
        let url = if to.starts_with("env:") { lifeboat::policy::resolve_secret(to)? } else { to.to_string() };
        rd::restore(repo, keys, &index, manifest, rd::RestoreTo::Server(&url), &opts).await?
    };
    if json {
        println!("{}", serde_json::json!({"id": manifest.id, "result": r}));
    } else if let Some(files) = r["files"].as_array() {
        let files: Vec<&str> = files.iter().filter_map(|f| f.as_str()).collect();
        eprintln!(
            "wrote {} of snapshot {} in {:.1}s; {}",
            files.join(", "),
            manifest.short_id(),
            started.elapsed().as_secs_f64(),
            r["next"].as_str().unwrap_or("")
        );
    } else {
        eprintln!(
            "restored {} keys of snapshot {} into {} in {:.1}s",
            r["keys_restored"],
            manifest.short_id(),
            r["target"].as_str().unwrap_or("?"),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(Some(ExitCode::SUCCESS))
}

fn tempfile_in(dir: &Path) -> Result<PathBuf> {
    Ok(dir.join(format!(".lifeboat-restore.{}.{}", std::process::id(), hex::encode(rand_bytes()))))
}

fn rand_bytes() -> [u8; 6] {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let b = t.to_le_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// A file that is fsync'd when the writer flushes, so a restore that
/// reports success is on disk.
struct SyncOnDrop(std::fs::File);

impl std::io::Write for SyncOnDrop {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.0.sync_all()
    }
}

async fn check(a: CheckArgs, json: bool) -> Result<ExitCode> {
    let repo = Repository::open(&a.repo.repo).await?;
    let keys = read_keys(&repo, &a.identity, "check").await?;
    let report = lifeboat::check::check(&repo, &keys, a.read_data).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"ok": report.ok(), "report": report}))?);
    } else {
        for w in &report.warnings {
            println!("warning: {w}");
        }
        for e in &report.errors {
            println!("ERROR: {}: {}", e.what, e.detail);
            if !e.affected_snapshots.is_empty() {
                println!("       affected snapshots: {}", e.affected_snapshots.join(", "));
            }
        }
        println!(
            "{} snapshot(s), {} pack(s){}: {}",
            report.snapshots,
            report.packs,
            if a.read_data { format!(", {} chunk(s) re-hashed", report.chunks_checked) } else { String::new() },
            if report.ok() { "no errors" } else { "ERRORS FOUND" }
        );
    }
    if !report.ok() {
        return Err(lifeboat::Error::CheckFailed(report.errors.len()).into());
    }
    Ok(ExitCode::SUCCESS)
}

async fn wal_cmd(w: WalCmd, json: bool) -> Result<ExitCode> {
    match w {
        WalCmd::Push { path, repo, archive, write_key, identity } => {
            let r = Repository::open(&repo.repo).await?;
            let keys = write_keys(&r, write_key.as_deref(), &identity).await?;
            let outcome = wal::push(&r, &keys, &archive, &path).await?;
            if json {
                println!("{}", serde_json::json!({"file": path, "stored": outcome == wal::PushOutcome::Stored}));
            } else if outcome == wal::PushOutcome::AlreadyArchived {
                eprintln!("{} was already archived (identical); nothing to do", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        WalCmd::Fetch { name, dest, repo, archive, identity } => {
            let r = Repository::open(&repo.repo).await?;
            let keys = read_keys(&r, &identity, "wal fetch").await?;
            wal::fetch(&r, &keys, &archive, &name, &dest).await?;
            Ok(ExitCode::SUCCESS)
        }
        WalCmd::List { repo, archive } => {
            let r = Repository::open(&repo.repo).await?;
            let list = wal::list(&r, &archive).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for h in &list {
                    println!("{}  {:>10}  {}", h.name, human(h.size), h.pushed_at.to_rfc3339());
                }
                println!("{} file(s) in WAL archive {archive:?}", list.len());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Newest snapshot and newest recoverable point per job of a policy.
async fn status(a: StatusArgs, json: bool) -> Result<ExitCode> {
    let policy = Policy::load(&a.policy)?;
    let url = policy.primary()?;
    let repo = Repository::open(&url).await?;
    let keys = read_keys(&repo, &a.identity, "status").await?;
    let all = repo.manifests(&keys).await?;
    let now = chrono::Utc::now();
    let mut rows = Vec::new();
    for job in &policy.jobs {
        let newest = all.iter().filter(|m| m.name == job.name).max_by_key(|m| m.started);
        // A logical snapshot recovers the state at its start (the exported snapshot).
        let mut recoverable = newest.map(|m| if m.source["mode"] == "physical" { m.finished } else { m.started });
        let mut wal_info = serde_json::Value::Null;
        let physical = all.iter().filter(|m| m.name == job.name && m.source["mode"] == "physical").max_by_key(|m| m.started);
        if job.kind == JobKind::Postgres && (job.wal_archiving || physical.is_some()) {
            let archived = wal::list(&repo, &job.name).await?;
            if let Some(base) = physical {
                let start = base.source["start_segment"].as_str().unwrap_or_default();
                let seg = base.source["wal_segment_size"].as_u64().unwrap_or(16 << 20);
                let reach = wal::reach(&archived, start, seg);
                if let Some(t) = reach.last_time {
                    recoverable = recoverable.max(Some(t));
                }
                wal_info = serde_json::json!({"files": archived.len(), "last_segment": reach.last_segment, "last_archived": reach.last_time, "gap": reach.gap});
            } else {
                wal_info = serde_json::json!({"files": archived.len(), "note": "no physical base backup yet: WAL alone cannot be restored"});
            }
        }
        rows.push(serde_json::json!({
            "job": job.name,
            "kind": job.kind.as_str(),
            "newest_snapshot": newest.map(|m| m.id.clone()),
            "newest_snapshot_time": newest.map(|m| m.started),
            "newest_recoverable_point": recoverable,
            "achieved_rpo_secs": recoverable.map(|t| (now - t).num_seconds()),
            "rpo_target": job.rpo,
            "wal": wal_info,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:<20} {:<10} {:<10} {:<22} {:>12}  rpo target", "job", "kind", "snapshot", "newest recoverable", "age");
        for r in &rows {
            let age = r["achieved_rpo_secs"].as_i64().map(|s| humantime::format_duration(std::time::Duration::from_secs(s.max(0) as u64)).to_string());
            println!(
                "{:<20} {:<10} {:<10} {:<22} {:>12}  {}",
                r["job"].as_str().unwrap_or(""),
                r["kind"].as_str().unwrap_or(""),
                r["newest_snapshot"].as_str().map(|s| &s[..8]).unwrap_or("none"),
                r["newest_recoverable_point"].as_str().map(|s| s.chars().take(19).collect::<String>()).unwrap_or_else(|| "never".into()),
                age.unwrap_or_else(|| "-".into()),
                r["rpo_target"].as_str().unwrap_or("-")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
