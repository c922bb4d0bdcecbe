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
use lifeboat::direct::DirectFile;
use lifeboat::pipeline::{BackupOptions, BackupSession, restore_stream, restore_stream_to};
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

// Parsed once per run: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
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
    Run(RunArgs),
    /// Run every policy job on its cron schedule; serve /metrics and /healthz.
    Daemon(DaemonArgs),
    /// List snapshots.
    Snapshots(SnapshotsArgs),
    /// Restore a snapshot.
    Restore(RestoreArgs),
    /// Check repository integrity (with --read-data: every byte).
    Check(CheckArgs),
    /// Remove snapshots according to the policy's retention rules.
    Forget(ForgetArgs),
    /// Delete data no snapshot references (takes the prune lock).
    ///
    /// Packs no kept snapshot uses go, and archived PostgreSQL WAL older than
    /// the oldest kept base backup of its archive (a point-in-time restore can
    /// never start before that backup). An archive with no kept base backup
    /// is left whole. Run `forget` first; `--dry-run` shows what would go.
    Prune(PruneArgs),
    /// Copy what the replica repositories of a policy lack.
    Replicate(PolicyArgs),
    /// Newest snapshot and newest recoverable point per job.
    Status(StatusArgs),
    /// PostgreSQL WAL archiving (archive_command / restore_command).
    #[command(subcommand)]
    Wal(WalCmd),
    /// Restore a snapshot into a scratch target and check it against its manifest.
    Verify(VerifyArgs),
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
    #[arg(long, env = "LIFEBOAT_WRITE_KEY_FILE")]
    write_key: Option<PathBuf>,
}

#[derive(Args)]
struct PolicyJobArgs {
    #[arg(long)]
    policy: PathBuf,
    job: String,
}

#[derive(Args)]
struct RunArgs {
    #[arg(long)]
    policy: PathBuf,
    job: String,
    #[arg(long, env = "LIFEBOAT_WRITE_KEY_FILE")]
    write_key: Option<PathBuf>,
    #[command(flatten)]
    identity: IdentityArg,
    /// Tag this run's snapshot; repeatable.
    #[arg(long = "tag")]
    tags: Vec<String>,
}

#[derive(Args)]
struct DaemonArgs {
    #[arg(long)]
    policy: PathBuf,
    #[arg(long, env = "LIFEBOAT_WRITE_KEY_FILE")]
    write_key: Option<PathBuf>,
    #[command(flatten)]
    identity: IdentityArg,
    /// Where the daemon remembers each job's last scheduled run (for catch-up after downtime).
    #[arg(long, env = "LIFEBOAT_STATE_FILE")]
    state_file: Option<PathBuf>,
}

#[derive(Args)]
struct ForgetArgs {
    #[arg(long)]
    policy: PathBuf,
    /// Only these jobs (default: every job with a retention rule).
    jobs: Vec<String>,
    /// Show what would go and why the rest stays; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, env = "LIFEBOAT_WRITE_KEY_FILE")]
    write_key: Option<PathBuf>,
    #[command(flatten)]
    identity: IdentityArg,
}

#[derive(Args)]
struct PruneArgs {
    #[command(flatten)]
    repo: RepoArg,
    #[command(flatten)]
    identity: IdentityArg,
    /// Show what would be deleted; delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Leave unindexed packs younger than this alone (a backup may still be writing them).
    #[arg(long, default_value = "1h", value_parser = parse_dur)]
    grace: chrono::Duration,
}

fn parse_dur(s: &str) -> std::result::Result<chrono::Duration, String> {
    lifeboat::schedule::parse_duration(s)
}

#[derive(Args)]
struct SnapshotsArgs {
    #[command(flatten)]
    repo: RepoArg,
    #[command(flatten)]
    identity: IdentityArg,
    /// List with the write credential (summaries only).
    #[arg(long, env = "LIFEBOAT_WRITE_KEY_FILE")]
    write_key: Option<PathBuf>,
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
    /// `-` (stdout), a file path (written atomically and synced, never replaced without --force;
    /// large files, and stdout redirected to a file, are written past the page cache with O_DIRECT;
    /// stdout switches to the page cache for the rest of the stream if the disk lags;
    /// LIFEBOAT_NO_DIRECT_IO=1 turns O_DIRECT off),
    /// or a database: `postgres://user@host/db`, `redis://[user:pass@]host:port` (a server or a
    /// cluster node), or `env:NAME` holding such a URL (keeps the password out of the process list).
    #[arg(long, required_unless_present_any = ["to_command", "to_dir"], conflicts_with_all = ["to_command", "to_dir"])]
    to: Option<String>,
    /// PostgreSQL physical snapshot: lay out a data directory here (every file synced to disk before success;
    /// files of 64 KiB or more written with O_DIRECT, so a restore does not flush the host's page cache)
    /// and configure recovery from the WAL archive.
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
    #[command(flatten)]
    kube: KubeRestoreArgs,
}

/// Kubernetes snapshots: `--to kube[:CONTEXT]` applies to a cluster, `--to-dir DIR` writes YAML
/// files for `kubectl apply -f DIR`. etcd snapshots: `--to-dir DIR` makes a data directory.
#[derive(Args)]
struct KubeRestoreArgs {
    /// Kubernetes: kubeconfig for --to kube[:CONTEXT] (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Kubernetes: restore namespace OLD as NEW (OLD=NEW; repeatable).
    #[arg(long = "namespace-map", value_name = "OLD=NEW")]
    namespace_map: Vec<String>,
    /// Kubernetes: restore only these resource types (deployments, deployments.apps, Deployment)
    /// or namespaces (ns:NAME, as named in the snapshot); repeatable.
    #[arg(long, value_name = "TYPE|ns:NAME")]
    include: Vec<String>,
    /// Kubernetes: leave out these resource types or namespaces (ns:NAME); wins over --include.
    #[arg(long, value_name = "TYPE|ns:NAME")]
    exclude: Vec<String>,
    /// Kubernetes: an object that already exists is left alone (skip) or updated by server-side apply (update).
    #[arg(long, default_value = "skip", value_parser = ["skip", "update"])]
    existing: String,
    /// Kubernetes: print the restore plan in order and change nothing.
    #[arg(long)]
    dry_run: bool,
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
#[command(
    after_help = "Scratch targets: an ephemeral PostgreSQL of the snapshot's major version (initdb + pg_ctl in a temp dir) \
or the job's [job.verify] target; an ephemeral redis-server; a hashing sink or [job.verify] command for command jobs. \
The result is stored as a verification record in the repository (and the primary); a failure exits 1 and alerts.

Example:
  lifeboat verify --policy policies/production.toml orders-db"
)]
struct VerifyArgs {
    #[arg(long)]
    policy: PathBuf,
    /// The job whose snapshot to verify.
    job: String,
    /// Snapshot id, unique prefix, or `latest` (default).
    #[arg(default_value = "latest")]
    snapshot: String,
    /// Verify from this [[repository]] (e.g. a replica) instead of the primary.
    #[arg(long)]
    repository: Option<String>,
    #[command(flatten)]
    identity: IdentityArg,
}

#[derive(Args)]
#[command(after_help = "The drill's start is the incident. Per job: RTO = incident → restore verified; \
RPO = incident − newest recoverable point in the surviving repository. Both are compared with the job's rto/rpo \
targets; a drill record is stored in the surviving and the primary repository; any failure exits 1.

Example:
  lifeboat drill --policy policies/production.toml --scenario region-loss")]
struct DrillArgs {
    #[arg(long)]
    policy: PathBuf,
    /// A [[scenario]] of the policy (default: every scenario, one after another).
    #[arg(long)]
    scenario: Option<String>,
    #[command(flatten)]
    identity: IdentityArg,
}

#[derive(Args)]
struct ReportArgs {
    /// Policy file (repositories, jobs and their RPO/RTO targets).
    #[arg(long)]
    policy: PathBuf,
    /// Read the records from this repository of the policy instead of the primary (when the primary region is gone).
    #[arg(long)]
    repository: Option<String>,
    #[command(flatten)]
    identity: IdentityArg,
    /// The month, YYYY-MM (UTC).
    #[arg(long, value_parser = parse_month)]
    month: lifeboat::report::Month,
    #[arg(long, value_parser = ["html", "md", "json"], default_value = "html")]
    format: String,
    /// Write the report here (atomically) instead of standard output.
    #[arg(long)]
    output: Option<PathBuf>,
}

fn parse_month(s: &str) -> std::result::Result<lifeboat::report::Month, String> {
    s.parse().map_err(|e: lifeboat::report::ReportError| e.to_string())
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate a policy file.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum DeployCmd {
    /// Render one Kubernetes CronJob per scheduled job, and their ServiceAccount (YAML on stdout).
    Render(RenderArgs),
}

#[derive(Args)]
struct RenderArgs {
    #[arg(long)]
    policy: PathBuf,
    /// Container image.
    #[arg(long, default_value = "ghcr.io/acme/lifeboat:0.1.0")]
    image: String,
    #[arg(long, default_value = "lifeboat")]
    namespace: String,
    /// Secret with write.key and the jobs' connection URLs.
    #[arg(long, default_value = "lifeboat-secrets")]
    secret: String,
    /// ServiceAccount annotation KEY=VALUE for workload identity (repeatable),
    /// e.g. eks.amazonaws.com/role-arn=arn:aws:iam::123456789012:role/lifeboat.
    #[arg(long = "service-account-annotation")]
    annotations: Vec<String>,
}

/// A command whose issue has not landed yet: exit 2, say so.
struct NotYet(&'static str);

/// glibc gives every thread that allocates its own arena and keeps freed
/// multi-MiB pack buffers there: a 1 GiB restore peaked at ~280 MiB RSS for
/// ~150 MiB of live buffers. One arena keeps RSS near the live data at the
/// same speed (docs/PERFORMANCE.md, "Memory"). MALLOC_ARENA_MAX, when set,
/// still wins.
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    // The runbook test checks that every documented command parses, without running it.
    if std::env::var_os("LIFEBOAT_PARSE_ONLY").is_some() {
        return ExitCode::SUCCESS;
    }
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
            let lints = p.lints();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": lints.is_empty(), "repositories": p.repositories.len(), "jobs": p.jobs.len(), "problems": lints})
                );
            } else {
                for l in &lints {
                    println!("{l}");
                }
                if lints.is_empty() {
                    println!("{}: OK ({} repositories, {} jobs)", file.display(), p.repositories.len(), p.jobs.len());
                }
            }
            if lints.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "error: {}: {} problem(s) that would keep this policy from its promises",
                    file.display(),
                    lints.len()
                );
                Ok(ExitCode::from(1))
            }
        }
        Cmd::Run(a) => run_job(a, json).await,
        Cmd::Daemon(a) => daemon(a).await,
        Cmd::Forget(a) => forget_cmd(a, json).await,
        Cmd::Prune(a) => prune_cmd(a, json).await,
        Cmd::Replicate(a) => replicate_cmd(a, json).await,
        Cmd::Status(a) => status(a, json).await,
        Cmd::Wal(w) => wal_cmd(w, json).await,
        Cmd::Verify(a) => verify_cmd(a, json).await,
        Cmd::Drill(a) => drill_cmd(a, json).await,
        Cmd::Report(a) => report_cmd(a).await,
        Cmd::Deploy(DeployCmd::Render(a)) => {
            let policy = Policy::load(&a.policy)?;
            let mut o = lifeboat::deploy::RenderOptions {
                image: a.image,
                namespace: a.namespace,
                secret: a.secret,
                ..Default::default()
            };
            for kv in &a.annotations {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("--service-account-annotation takes KEY=VALUE"))?;
                o.service_account_annotations.push((k.to_string(), v.to_string()));
            }
            let docs = lifeboat::deploy::render(&policy, &o)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&docs)?);
            } else {
                print!("{}", lifeboat::deploy::to_yaml(&docs)?);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn key_generate(output: Option<PathBuf>, json: bool) -> Result<ExitCode> {
    let (text, recipient) = crypto::generate_identity();
    match output {
        Some(path) => {
            crypto::write_secret_file(&path, &text)
                .with_context(|| format!("cannot write {} (an existing key is never overwritten)", path.display()))?;
            if json {
                println!("{}", serde_json::json!({"recipient": recipient, "identity_file": path}));
            } else {
                println!("{recipient}");
                eprintln!(
                    "identity written to {}; keep it safe and offline: it is the only way to restore",
                    path.display()
                );
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
    if let Some(p) = &a.write_key_out
        && p.exists()
    {
        bail!("{} already exists; refusing to overwrite a credential", p.display());
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
        println!(
            "{}",
            serde_json::json!({"repository_id": repo.config.id, "url": repo.url, "write_key": a.write_key_out})
        );
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
        let job = policy.job(a.job.as_deref().unwrap_or_default())?.clone();
        let url = match &a.repo {
            Some(u) => u.clone(),
            None => policy.primary()?,
        };
        let repo = Repository::open(&url).await?;
        let keys = write_keys(&repo, a.write_key.as_deref(), &a.identity).await?;
        backup_job(&repo, &keys, &job, &a.tags).await?
    } else if a.stdin {
        let url = a.repo.clone().ok_or_else(|| anyhow::anyhow!("--repo (or LIFEBOAT_REPO) is required"))?;
        let repo = Repository::open(&url).await?;
        let keys = write_keys(&repo, a.write_key.as_deref(), &a.identity).await?;
        let name = a.name.clone().unwrap_or_default();
        let opts = BackupOptions { name, kind: "stdin".into(), tags: a.tags.clone() };
        let mut session = BackupSession::start(&repo, &keys, opts).await?;
        // A file redirected to stdin is mapped rather than read (no copies).
        let r = match lifeboat::source::Mapped::stdin() {
            Some(m) => session.add_mapped_stream("stdin", m).await,
            None => session.add_stream("stdin", lifeboat::source::stdin()).await,
        }
        .map(|_| serde_json::Value::Null);
        session.finish(r).await?
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

/// Back up one policy job into `repo`.
async fn backup_job(
    repo: &Repository,
    keys: &Keys,
    job: &lifeboat::policy::JobSpec,
    extra_tags: &[String],
) -> Result<Manifest> {
    let mut tags = job.tags.clone();
    tags.extend(extra_tags.iter().cloned());
    let opts = BackupOptions { name: job.name.clone(), kind: job.kind.as_str().into(), tags };
    let span = tracing::info_span!("job", job = %job.name);
    tracing::Instrument::instrument(backup_job_inner(repo, keys, job, opts), span).await
}

async fn backup_job_inner(
    repo: &Repository,
    keys: &Keys,
    job: &lifeboat::policy::JobSpec,
    opts: BackupOptions,
) -> Result<Manifest> {
    Ok(match job.kind {
        JobKind::Command => {
            let mut session = BackupSession::start(repo, keys, opts).await?;
            let command = job.command.as_deref().unwrap_or_default();
            let meta = lifeboat::source::backup_command(&mut session, &job.name, command).await;
            session.finish(meta).await?
        }
        JobKind::Postgres => {
            let conn = job.connection()?;
            let mut session = BackupSession::start(repo, keys, opts).await?;
            let meta = match job.mode.as_deref().unwrap_or("logical") {
                "physical" => pg::backup_physical(&mut session, &job.name, &conn, &job.pg_options()).await,
                _ => pg::backup_logical(&mut session, &job.name, &conn, &job.pg_options()).await,
            };
            session.finish(meta).await?
        }
        JobKind::Redis => {
            let conn = job.connection()?;
            let mut session = BackupSession::start(repo, keys, opts).await?;
            let meta = rd::backup(&mut session, &job.name, &conn, job.mode.as_deref().unwrap_or("rdb")).await;
            session.finish(meta).await?
        }
        JobKind::Kubernetes => {
            let mut session = BackupSession::start(repo, keys, opts).await?;
            let meta = lifeboat::source::kubernetes::backup(&mut session, &job.kube_options()).await;
            session.finish(meta).await?
        }
        JobKind::Etcd => {
            let o = job.etcd_options()?;
            let mut session = BackupSession::start(repo, keys, opts).await?;
            let meta = lifeboat::source::etcd::backup(&mut session, &o).await;
            session.finish(meta).await?
        }
    })
}

/// Byte counts for people: the report's formatter, so the CLI and the report agree.
fn human(n: u64) -> String {
    lifeboat::report::fmt_bytes(n)
}

async fn snapshots(a: SnapshotsArgs, json: bool) -> Result<ExitCode> {
    let repo = Repository::open(&a.repo.repo).await?;
    if a.identity.identity.is_none() && a.write_key.is_some() {
        // The write credential reads summaries only: names, times, sizes, tags.
        let keys = write_keys(&repo, a.write_key.as_deref(), &a.identity).await?;
        let list: Vec<_> = repo
            .snapshot_metas(&keys)
            .await?
            .into_iter()
            .filter(|m| a.name.as_ref().is_none_or(|n| &m.name == n))
            .collect();
        if json {
            println!("{}", serde_json::to_string_pretty(&list)?);
        } else {
            for m in &list {
                print_snapshot_row(m.short_id(), m.started, &m.name, &m.kind, m.size, &m.tags);
            }
            println!("{} snapshot(s)", list.len());
        }
        return Ok(ExitCode::SUCCESS);
    }
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
            print_snapshot_row(m.short_id(), m.started, &m.name, &m.kind, m.total_size(), &m.tags);
        }
        println!("{} snapshot(s)", list.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// One line of `lifeboat snapshots` (the same columns with the write credential or the identity).
fn print_snapshot_row(
    id: &str,
    started: chrono::DateTime<chrono::Utc>,
    name: &str,
    kind: &str,
    size: u64,
    tags: &[String],
) {
    println!(
        "{:<10} {:<20} {:<24} {:<8} {:>10}  {}",
        id,
        started.format("%Y-%m-%d %H:%M:%S"),
        name,
        kind,
        human(size),
        tags.join(",")
    );
}

async fn restore(a: RestoreArgs, json: bool) -> Result<ExitCode> {
    let repo = Repository::open(&a.repo.repo).await?;
    let keys = read_keys(&repo, &a.identity, "restoring").await?;
    let manifest = repo.find_snapshot(&keys, &a.snapshot, a.name.as_deref()).await?;
    if manifest.kind == "redis"
        && let Some(code) = restore_redis(&a, &repo, &keys, &manifest, json).await?
    {
        return Ok(code);
    }
    if manifest.kind == "kubernetes"
        && let Some(code) = restore_kubernetes(&a, &repo, &keys, &manifest, json).await?
    {
        return Ok(code);
    }
    if a.to.as_deref().is_some_and(|t| t == "kube" || t.starts_with("kube:")) {
        bail!(
            "snapshot {} is a {} snapshot; --to kube restores kubernetes snapshots",
            manifest.short_id(),
            manifest.kind
        );
    }
    if manifest.kind == "etcd"
        && let Some(dir) = &a.to_dir
    {
        let index = repo.load_index(&keys).await?;
        let o = lifeboat::source::etcd::DataDirOptions::default();
        let r = lifeboat::source::etcd::restore_to_dir(&repo, &keys, &index, &manifest, dir, &o).await?;
        if json {
            println!("{}", serde_json::json!({"id": manifest.id, "result": r}));
        } else {
            eprintln!(
                "restored etcd snapshot {} (revision {}) into {}; {}",
                manifest.short_id(),
                r["revision"],
                dir.display(),
                r["next"].as_str().unwrap_or("")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let wanted = a.stream.clone().or_else(|| a.database.as_ref().map(|d| format!("db/{d}")));
    let is_db_target =
        a.to_dir.is_some() || a.to.as_deref().is_some_and(|t| t.starts_with("postgres") || t.starts_with("env:"));
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
            repo_url: a.repo.repo.absolute().with_context(|| format!("repository {}", a.repo.repo))?,
            identity,
            wait_secs: a.wait,
        };
        let r = pg::restore_physical(&repo, &keys, &index, &manifest, dir, &o).await?;
        if json {
            println!(
                "{}",
                serde_json::json!({"id": manifest.id, "result": r, "seconds": started.elapsed().as_secs_f64()})
            );
        } else {
            // The split tells the engineer where an RTO goes.
            let secs = |k: &str| r[k].as_f64().map(|s| format!("{s:.1} s")).unwrap_or_else(|| "?".into());
            eprintln!(
                "restored base backup {} into {} ({} files, extracted in {}); recovery {} (newest recoverable point {})",
                manifest.short_id(),
                dir.display(),
                r["files"],
                secs("extracted_in_secs"),
                if a.start {
                    format!("finished in {}, server running", secs("recovered_in_secs"))
                } else {
                    "configured: start the server to recover".into()
                },
                r["newest_recoverable"].as_str().unwrap_or("?")
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(to) =
        a.to.as_deref()
            .filter(|t| t.starts_with("postgres://") || t.starts_with("postgresql://") || t.starts_with("env:"))
    {
        if to.starts_with("postgres") && pg::redact(to) != to {
            eprintln!("warning: a password in --to is visible in the process list; use --to env:NAME");
        }
        let conn = if to.starts_with("env:") { lifeboat::policy::resolve_secret(to)? } else { to.to_string() };
        let db =
            a.database.clone().or_else(|| a.stream.as_ref().and_then(|s| s.strip_prefix("db/").map(str::to_string)));
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
            Some("-") => match DirectFile::stdout(stream.size) {
                Some(f) => restore_stream_to(&repo, &keys, &index, &manifest.id, stream, f).await?.0,
                None => {
                    let out = lifeboat::direct::stdout_file().context("cannot use stdout")?;
                    restore_stream(&repo, &keys, &index, &manifest.id, stream, out).await?
                }
            },
            Some(path) => {
                let path = PathBuf::from(path);
                if path.exists() && !a.force {
                    bail!("{} exists; pass --force to replace it", path.display());
                }
                let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
                let tmp = tempfile_in(dir)?;
                // Synced when the restore flushes it: success means on disk.
                let file = DirectFile::create(&tmp, stream.size)
                    .with_context(|| format!("cannot create {}", tmp.display()))?;
                let r = restore_stream_to(&repo, &keys, &index, &manifest.id, stream, file).await.map(|(n, _)| n);
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
        println!(
            "{}",
            serde_json::json!({"id": manifest.id, "stream": stream.name, "bytes": written, "seconds": secs})
        );
    } else {
        eprintln!(
            "restored {} of snapshot {} ({}) in {:.1}s",
            human(written),
            manifest.short_id(),
            manifest.name,
            secs
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A Kubernetes snapshot into a cluster (`--to kube[:CONTEXT]`), YAML files
/// (`--to-dir`), or a printed plan (`--dry-run`); `None` for a raw stream target.
async fn restore_kubernetes(
    a: &RestoreArgs,
    repo: &Repository,
    keys: &Keys,
    manifest: &Manifest,
    json: bool,
) -> Result<Option<ExitCode>> {
    use lifeboat::source::kubernetes as k8s;
    let context = match a.to.as_deref() {
        Some("kube") => Some(None),
        Some(t) if t.starts_with("kube:") => Some(Some(t["kube:".len()..].to_string())),
        _ => None,
    };
    if context.is_none() && a.to_dir.is_none() && !a.kube.dry_run {
        return Ok(None);
    }
    let filter =
        k8s::RestoreFilter { include: a.kube.include.clone(), exclude: a.kube.exclude.clone(), ..Default::default() }
            .with_namespace_map(&a.kube.namespace_map)?;
    let index = repo.load_index(keys).await?;
    let plan = k8s::read_plan(repo, keys, &index, manifest, &filter).await?;
    let mut failures = plan.errors.clone();
    if a.kube.dry_run {
        if json {
            println!("{}", serde_json::to_string_pretty(&plan)?);
        } else {
            println!(
                "restore plan for snapshot {} ({} objects, in this order):",
                manifest.short_id(),
                plan.objects.len()
            );
            for o in &plan.objects {
                println!("  {:<16} {}", format!("{:?}", o.phase).to_lowercase(), o.describe());
            }
        }
    } else if let Some(dir) = &a.to_dir {
        let files = k8s::write_yaml_dir(&plan, dir)?;
        if json {
            println!(
                "{}",
                serde_json::json!({"id": manifest.id, "files": files.len(), "dir": dir, "failures": failures})
            );
        } else {
            eprintln!(
                "wrote {} YAML files of snapshot {} into {} (apply with `kubectl apply -f {}`)",
                files.len(),
                manifest.short_id(),
                dir.display(),
                dir.display()
            );
        }
    } else if let Some(context) = context {
        let client = k8s::client(a.kube.kubeconfig.as_deref(), context.as_deref()).await?;
        let existing = if a.kube.existing == "update" { k8s::Existing::Update } else { k8s::Existing::Skip };
        let r = k8s::apply_plan(&client, &plan, existing).await?;
        failures = r.failures.clone();
        if json {
            println!("{}", serde_json::json!({"id": manifest.id, "result": r}));
        } else {
            eprintln!(
                "restored snapshot {}: {} created, {} updated, {} already there (left alone), {} failed",
                manifest.short_id(),
                r.created,
                r.updated,
                r.existing_skipped,
                r.failures.len()
            );
        }
    }
    for f in &failures {
        eprintln!("error: {f}");
    }
    if failures.is_empty() {
        Ok(Some(ExitCode::SUCCESS))
    } else {
        eprintln!("error: {} object(s) could not be restored (listed above); the others were", failures.len());
        Ok(Some(ExitCode::from(1)))
    }
}

/// A Redis snapshot into a server/cluster (`--to redis://…|env:NAME`) or a
/// data dir (`--to-dir`); `None` when the target is a plain file or stdout.
async fn restore_redis(
    a: &RestoreArgs,
    repo: &Repository,
    keys: &Keys,
    manifest: &Manifest,
    json: bool,
) -> Result<Option<ExitCode>> {
    let to_server =
        a.to.as_deref()
            .filter(|t| ["redis://", "rediss://", "unix://", "redis+unix://", "env:"].iter().any(|p| t.starts_with(p)));
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

/// Per job: newest snapshot and its age in every region, replication lag,
/// and the newest recoverable point (the achieved RPO).
async fn status(a: StatusArgs, json: bool) -> Result<ExitCode> {
    let policy = Policy::load(&a.policy)?;
    let primary = Repository::open(&policy.primary()?).await?;
    let keys = any_keys(&primary, a.write_key.as_deref(), &a.identity).await?;
    let now = lifeboat::clock::now();
    // Snapshot summaries per repository (a replica may be unreachable: say so).
    let mut per_repo = Vec::new();
    for r in &policy.repositories {
        let metas = match r.repo_url() {
            Ok(url) => match Repository::open(&url).await {
                Ok(repo) => repo.snapshot_metas(&keys).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        per_repo.push((r.name.clone(), r.region(), metas));
    }
    let primary_metas = per_repo[0].2.as_ref().map_err(|e| anyhow::anyhow!("primary repository: {e}"))?.clone();
    let mut rows = Vec::new();
    for job in &policy.jobs {
        let newest_primary = primary_metas.iter().filter(|m| m.name == job.name).max_by_key(|m| m.started);
        let mut regions = Vec::new();
        for (name, region, metas) in &per_repo {
            match metas {
                Ok(ms) => {
                    let newest = ms.iter().filter(|m| m.name == job.name).max_by_key(|m| m.started);
                    let lag = match (newest_primary, newest) {
                        (Some(p), Some(n)) => Some((p.started - n.started).num_seconds().max(0)),
                        (Some(p), None) => Some((now - p.started).num_seconds()),
                        _ => None,
                    };
                    regions.push(serde_json::json!({
                        "repository": name, "region": region,
                        "newest_snapshot": newest.map(|m| m.id.clone()),
                        "newest_time": newest.map(|m| m.started),
                        "age_secs": newest.map(|m| (now - m.started).num_seconds()),
                        "replication_lag_secs": lag,
                    }));
                }
                Err(e) => regions.push(serde_json::json!({"repository": name, "region": region, "error": e})),
            }
        }
        // Newest recoverable point: the snapshot, or the WAL archived after a base backup.
        let mut recoverable =
            newest_primary.map(|m| if m.mode.as_deref() == Some("physical") { m.finished } else { m.started });
        let mut wal_info = serde_json::Value::Null;
        if job.kind == JobKind::Postgres && (job.wal_archiving || job.mode.as_deref() == Some("physical")) {
            let archived = wal::list(&primary, &job.name).await?;
            let base = primary_metas
                .iter()
                .filter(|m| m.name == job.name && m.mode.as_deref() == Some("physical"))
                .max_by_key(|m| m.started);
            match (base, keys.can_read()) {
                (Some(b), true) => {
                    let m = primary.load_manifest(&keys, &b.id).await?;
                    let start = m.source["start_segment"].as_str().unwrap_or_default();
                    let seg = m.source["wal_segment_size"].as_u64().unwrap_or(16 << 20);
                    let reach = wal::reach(&archived, start, seg);
                    if let Some(t) = reach.last_time {
                        recoverable = recoverable.max(Some(t));
                    }
                    wal_info = serde_json::json!({"files": archived.len(), "last_segment": reach.last_segment, "last_archived": reach.last_time, "gap": reach.gap});
                }
                (Some(_), false) => {
                    // Without the identity we cannot read the base backup's start segment: assume no hole.
                    if let Some(last) = archived
                        .iter()
                        .filter(|h| h.pushed_at >= base.map(|b| b.started).unwrap_or(now))
                        .map(|h| h.pushed_at)
                        .max()
                    {
                        recoverable = recoverable.max(Some(last));
                    }
                    wal_info = serde_json::json!({"files": archived.len(), "note": "continuity not checked (needs --identity)"});
                }
                (None, _) => {
                    wal_info = serde_json::json!({"files": archived.len(), "note": "no physical base backup yet: WAL alone cannot be restored"})
                }
            }
        }
        let rpo_target = job.rpo.as_deref().and_then(|r| lifeboat::schedule::parse_duration(r).ok());
        let achieved = recoverable.map(|t| (now - t).num_seconds());
        rows.push(serde_json::json!({
            "job": job.name,
            "kind": job.kind.as_str(),
            "newest_recoverable_point": recoverable,
            "achieved_rpo_secs": achieved,
            "rpo_target": job.rpo,
            "rpo_met": match (achieved, rpo_target) { (Some(a), Some(t)) => Some(a <= t.num_seconds()), _ => None },
            "regions": regions,
            "wal": wal_info,
        }));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        let fmt = |s: Option<i64>| {
            s.map(|s| lifeboat::schedule::fmt_duration(chrono::Duration::seconds(s))).unwrap_or_else(|| "-".into())
        };
        println!(
            "{:<22} {:<12} {:<10} {:<20} {:>14} {:>12}",
            "job / region", "", "snapshot", "newest (UTC)", "age", "lag"
        );
        for r in &rows {
            println!(
                "{:<22} recoverable: {} (rpo {} vs target {}{})",
                r["job"].as_str().unwrap_or(""),
                r["newest_recoverable_point"]
                    .as_str()
                    .map(|s| s.chars().take(19).collect::<String>())
                    .unwrap_or_else(|| "never".into()),
                fmt(r["achieved_rpo_secs"].as_i64()),
                r["rpo_target"].as_str().unwrap_or("-"),
                match r["rpo_met"].as_bool() {
                    Some(true) => ", met",
                    Some(false) => ", MISSED",
                    None => "",
                }
            );
            for g in r["regions"].as_array().into_iter().flatten() {
                if let Some(e) = g["error"].as_str() {
                    println!(
                        "  {:<20} {:<12} ERROR: {e}",
                        g["repository"].as_str().unwrap_or(""),
                        g["region"].as_str().unwrap_or("")
                    );
                    continue;
                }
                println!(
                    "  {:<20} {:<12} {:<10} {:<20} {:>14} {:>12}",
                    g["repository"].as_str().unwrap_or(""),
                    g["region"].as_str().unwrap_or(""),
                    g["newest_snapshot"].as_str().map(|s| &s[..8]).unwrap_or("none"),
                    g["newest_time"]
                        .as_str()
                        .map(|s| s.chars().take(19).collect::<String>())
                        .unwrap_or_else(|| "-".into()),
                    fmt(g["age_secs"].as_i64()),
                    fmt(g["replication_lag_secs"].as_i64())
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Keys from the write credential or the identity, whichever is given.
async fn any_keys(repo: &Repository, write_key: Option<&Path>, identity: &IdentityArg) -> Result<Keys> {
    if identity.identity.is_some() {
        return read_keys(repo, identity, "this command").await;
    }
    write_keys(repo, write_key, identity).await
}

/// Retention rules per tag (`None`: the job's own rules, for untagged snapshots).
type RetentionGroups = Vec<(Option<String>, lifeboat::retention::RetentionRules)>;

fn retention_groups(job: &lifeboat::policy::JobSpec) -> Result<Option<RetentionGroups>> {
    let mut groups = Vec::new();
    if let Some(tags) = &job.tag_retention {
        for (tag, v) in tags {
            let t =
                v.as_table().ok_or_else(|| anyhow::anyhow!("job {}: tag_retention.{tag} must be a table", job.name))?;
            groups.push((Some(tag.clone()), lifeboat::retention::RetentionRules::from_table(t)?));
        }
    }
    if let Some(r) = &job.retention {
        groups.push((None, lifeboat::retention::RetentionRules::from_table(r)?));
    }
    Ok(if groups.is_empty() { None } else { Some(groups) })
}

async fn forget_cmd(a: ForgetArgs, json: bool) -> Result<ExitCode> {
    let policy = Policy::load(&a.policy)?;
    let repo = Repository::open(&policy.primary()?).await?;
    let keys = any_keys(&repo, a.write_key.as_deref(), &a.identity).await?;
    let now = lifeboat::clock::now();
    let mut reports = Vec::new();
    for job in &policy.jobs {
        if !a.jobs.is_empty() && !a.jobs.contains(&job.name) {
            continue;
        }
        let Some(groups) = retention_groups(job)? else { continue };
        reports.push(lifeboat::prune::forget(&repo, &keys, &job.name, &groups, now, a.dry_run).await?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            println!("job {}:", r.job);
            for d in &r.decisions {
                let verdict = if d.keep {
                    "keep  "
                } else if a.dry_run {
                    "would remove"
                } else {
                    "remove"
                };
                println!(
                    "  {} {}  {}  {}",
                    verdict,
                    &d.id[..8.min(d.id.len())],
                    d.time.format("%Y-%m-%d %H:%M"),
                    d.reasons.join(", ")
                );
            }
            if !r.locked.is_empty() {
                println!("  {} snapshot(s) are still under Object Lock and stay until it expires", r.locked.len());
            }
        }
        if a.dry_run {
            println!("dry run: nothing was removed");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn prune_cmd(a: PruneArgs, json: bool) -> Result<ExitCode> {
    let repo = Repository::open(&a.repo.repo).await?;
    let keys = read_keys(&repo, &a.identity, "prune").await?;
    let r = lifeboat::prune::prune(&repo, &keys, a.grace, a.dry_run).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{}{} of {} pack(s) deleted ({}), {} unindexed leftover(s) removed, {} index file(s) rewritten; {} pack(s) partly used ({} reclaimable by repacking); {} pack(s) under Object Lock kept",
            if a.dry_run { "dry run: " } else { "" },
            r.packs_deleted,
            r.packs_total,
            human(r.bytes_deleted),
            r.unindexed_packs_deleted,
            r.index_files_rewritten,
            r.packs_partly_used,
            human(r.bytes_reclaimable_by_repack),
            r.packs_locked
        );
        if r.wal_files_deleted + r.wal_files_locked > 0 {
            println!(
                "WAL: {} file(s) older than every kept base backup {} ({}); {} under Object Lock kept",
                r.wal_files_deleted,
                if a.dry_run { "would go" } else { "deleted" },
                human(r.wal_bytes_deleted),
                r.wal_files_locked
            );
        }
        if !r.wal_archives_without_base_backup.is_empty() {
            println!(
                "WAL archive(s) kept whole, no kept base backup says where replay starts: {}",
                r.wal_archives_without_base_backup.join(", ")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn replicate_all(
    policy: &Policy,
    repo: &Repository,
) -> Vec<(String, String, Result<lifeboat::replicate::ReplicationReport>)> {
    let mut out = Vec::new();
    for r in policy.repositories.iter().skip(1) {
        let res = match r.repo_url() {
            Ok(url) => lifeboat::replicate::replicate(repo, &url, &r.name).await.map_err(anyhow::Error::from),
            Err(e) => Err(e.into()),
        };
        if let Ok(rep) = &res {
            let _ = repo
                .write_record("replication", &serde_json::json!({"time": lifeboat::clock::now(), "replica": r.name, "region": r.region(), "report": rep}))
                .await;
        }
        out.push((r.name.clone(), r.region(), res));
    }
    out
}

async fn replicate_cmd(a: PolicyArgs, json: bool) -> Result<ExitCode> {
    let policy = Policy::load(&a.policy)?;
    let repo = Repository::open(&policy.primary()?).await?;
    if policy.repositories.len() < 2 {
        bail!("{}: only one [[repository]]; add a replica in another region to replicate to", a.policy.display());
    }
    let results = replicate_all(&policy, &repo).await;
    let mut failed = 0;
    let mut rows = Vec::new();
    for (name, region, r) in results {
        match r {
            Ok(rep) => {
                if !json {
                    println!(
                        "{name} ({region}): {} object(s) copied ({}), {} snapshot(s), lag before {:.0}s",
                        rep.objects_copied,
                        human(rep.bytes_copied),
                        rep.snapshots_copied,
                        rep.lag_before_secs
                    );
                }
                rows.push(serde_json::json!({"replica": name, "region": region, "ok": true, "report": rep}));
            }
            Err(e) => {
                failed += 1;
                eprintln!("error: replication to {name} ({region}) failed: {e:#}");
                rows.push(
                    serde_json::json!({"replica": name, "region": region, "ok": false, "error": format!("{e:#}")}),
                );
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    }
    Ok(if failed > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

type Steps = Vec<(String, std::result::Result<String, String>)>;

/// One run of a job: backup, replication to every replica, retention,
/// metrics push and alerts. Never fails as a whole: each step reports.
async fn run_once(
    policy: &Policy,
    job: &lifeboat::policy::JobSpec,
    repo: &Repository,
    keys: &Keys,
    extra_tags: &[String],
) -> (Steps, lifeboat::metrics::JobMetrics) {
    let started = lifeboat::clock::now();
    let clock = std::time::Instant::now();
    let mut steps: Vec<(String, std::result::Result<String, String>)> = Vec::new();
    let mut metrics = lifeboat::metrics::JobMetrics {
        job: job.name.clone(),
        last_run_timestamp: started.timestamp() as f64,
        ..Default::default()
    };

    // 1. Backup.
    let backup = backup_job(repo, keys, job, extra_tags).await;
    let backup_ok = backup.is_ok();
    match &backup {
        Ok(m) => {
            metrics.bytes_read = m.stats.bytes_read;
            metrics.bytes_stored_new = m.stats.bytes_new_stored;
            metrics.bytes_new_raw = m.stats.bytes_new_raw;
            steps.push((
                "backup".into(),
                Ok(format!(
                    "snapshot {} ({} read, {} stored)",
                    m.short_id(),
                    human(m.stats.bytes_read),
                    human(m.stats.bytes_new_stored)
                )),
            ));
        }
        Err(e) => steps.push(("backup".into(), Err(format!("{e:#}")))),
    }
    let _ = repo
        .write_record(
            "backup",
            &serde_json::json!({
                "job": job.name, "time": started, "ok": backup_ok,
                "snapshot": backup.as_ref().ok().map(|m| m.id.clone()),
                "snapshot_time": backup.as_ref().ok().map(|m| m.started),
                "stats": backup.as_ref().ok().map(|m| m.stats.clone()),
                "error": backup.as_ref().err().map(|e| format!("{e:#}")),
            }),
        )
        .await;
    // 2. Replication (even after a failed backup: older snapshots still need copies).
    for (name, region, r) in replicate_all(policy, repo).await {
        match r {
            Ok(rep) => {
                metrics.replication_lag_secs.push((region.clone(), rep.lag_before_secs));
                steps.push((format!("replicate {name}"), Ok(format!("{} object(s) copied", rep.objects_copied))));
            }
            Err(e) => steps.push((format!("replicate {name}"), Err(format!("{e:#}")))),
        }
    }
    // 3. Retention.
    match retention_groups(job) {
        Ok(Some(groups)) => {
            match lifeboat::prune::forget(repo, keys, &job.name, &groups, lifeboat::clock::now(), false).await {
                Ok(r) => steps.push(("retention".into(), Ok(format!("{} snapshot(s) removed", r.removed.len())))),
                Err(e) => steps.push(("retention".into(), Err(format!("{e:#}")))),
            }
        }
        Ok(None) => {}
        Err(e) => steps.push(("retention".into(), Err(format!("{e:#}")))),
    }
    // 4. Metrics and alerts.
    let failed: Vec<(String, std::result::Result<String, String>)> =
        steps.iter().filter(|(_, r)| r.is_err()).cloned().collect();
    metrics.success = failed.is_empty();
    metrics.failures_total = u64::from(!failed.is_empty());
    metrics.duration_secs = clock.elapsed().as_secs_f64();
    if metrics.success {
        metrics.last_success_timestamp = Some(lifeboat::clock::now().timestamp() as f64);
    }
    if let Some(alerts) = &policy.alerts {
        if let Some(gw) = &alerts.pushgateway {
            let text = lifeboat::metrics::encode(std::slice::from_ref(&metrics));
            if let Err(e) = lifeboat::metrics::push(gw, &job.name, &text).await {
                steps.push(("metrics".into(), Err(e.to_string())));
            }
        }
        let mut alerts_to_send = Vec::new();
        if !failed.is_empty() {
            let reason = failed
                .iter()
                .map(|(s, r)| format!("{s}: {}", r.as_ref().err().cloned().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join("; ");
            let text = format!(":rotating_light: lifeboat job *{}* failed: {reason}", job.name);
            alerts_to_send.push(lifeboat::metrics::Alert::now(&job.name, "failure", text, reason));
        }
        // The newest recoverable point older than the RPO target is an incident too.
        if let Some(rpo) = job.rpo.as_deref().and_then(|r| lifeboat::schedule::parse_duration(r).ok())
            && let Ok(Some(point)) = lifeboat::drill::newest_recoverable(repo, keys, job).await
        {
            let age = lifeboat::clock::now() - point;
            if age > rpo {
                let reason = format!(
                    "newest recoverable point {} is {} old, older than the RPO target {}",
                    point.format("%Y-%m-%d %H:%M:%S UTC"),
                    lifeboat::schedule::fmt_duration(age),
                    job.rpo.as_deref().unwrap_or_default()
                );
                let text = format!(":warning: lifeboat job *{}*: {reason}", job.name);
                alerts_to_send.push(lifeboat::metrics::Alert::now(&job.name, "rpo", text, reason));
            }
        }
        if let (Some(hook), false) = (&alerts.webhook, alerts_to_send.is_empty()) {
            match lifeboat::policy::resolve_secret(hook) {
                Ok(url) => {
                    for alert in &alerts_to_send {
                        if let Err(e) = lifeboat::metrics::send_alert(&url, alert).await {
                            steps.push(("alert".into(), Err(e.to_string())));
                        }
                    }
                }
                Err(e) => steps.push(("alert".into(), Err(e.to_string()))),
            }
        }
    }
    (steps, metrics)
}

/// What a CronJob runs: backup, replicate, retention, metrics and alerts.
async fn run_job(a: RunArgs, json: bool) -> Result<ExitCode> {
    let policy = Policy::load(&a.policy)?;
    let job = policy.job(&a.job)?.clone();
    let repo = Repository::open(&policy.primary()?).await?;
    let keys = write_keys(&repo, a.write_key.as_deref(), &a.identity).await?;
    let (steps, metrics) = run_once(&policy, &job, &repo, &keys, &a.tags).await;
    let failed_names: Vec<String> = steps.iter().filter(|(_, r)| r.is_err()).map(|(s, _)| s.clone()).collect();
    if json {
        let rows: Vec<serde_json::Value> = steps
            .iter()
            .map(|(s, r)| match r {
                Ok(m) => serde_json::json!({"step": s, "ok": true, "detail": m}),
                Err(e) => serde_json::json!({"step": s, "ok": false, "error": e}),
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"job": job.name, "ok": failed_names.is_empty(), "steps": rows, "metrics": metrics})
        );
    } else {
        for (s, r) in &steps {
            match r {
                Ok(m) => eprintln!("  {s:<24} ok      {m}"),
                Err(e) => eprintln!("  {s:<24} FAILED  {e}"),
            }
        }
    }
    if failed_names.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("error: run {}: {} failed", job.name, failed_names.join(", "));
        Ok(ExitCode::from(1))
    }
}

/// The long-running scheduler: every job on its cron schedule, one run of a
/// job at a time, at most `max_concurrent` runs overall, optional jitter,
/// catch-up of runs missed while down, /metrics and /healthz, and on SIGTERM
/// an immediate stop: in-flight runs are abandoned before their manifest is
/// written, so no partial snapshot ever becomes visible.
async fn daemon(a: DaemonArgs) -> Result<ExitCode> {
    use std::collections::HashMap;
    use std::sync::Arc;
    use tokio::sync::Mutex;

    let policy = Arc::new(Policy::load(&a.policy)?);
    let repo = Repository::open(&policy.primary()?).await?;
    let keys = write_keys(&repo, a.write_key.as_deref(), &a.identity).await?;
    let settings = policy.daemon.clone().unwrap_or_default();
    let max = settings.max_concurrent.unwrap_or(2).max(1);
    let jitter = match &settings.jitter {
        Some(j) => lifeboat::schedule::parse_duration(j).map_err(|e| anyhow::anyhow!(e))?.to_std()?,
        None => std::time::Duration::ZERO,
    };
    let catch_up = settings.catch_up.as_deref().unwrap_or("once") == "once";
    let listen = settings.listen.clone().unwrap_or_else(|| "127.0.0.1:9184".into());
    let state_path = a.state_file.clone().unwrap_or_else(|| {
        let base = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir);
        base.join("lifeboat/daemon-state.json")
    });
    let mut state: HashMap<String, chrono::DateTime<chrono::Utc>> =
        std::fs::read(&state_path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();

    let mut schedules = Vec::new();
    for job in &policy.jobs {
        if let Some(expr) = &job.schedule {
            let s =
                lifeboat::schedule::Schedule::parse(expr, job.timezone.as_deref()).map_err(|e| anyhow::anyhow!(e))?;
            schedules.push((job.clone(), s));
        }
    }
    if schedules.is_empty() {
        bail!("{}: no job has a schedule; nothing for the daemon to do", a.policy.display());
    }

    let metrics: Arc<Mutex<HashMap<String, lifeboat::metrics::JobMetrics>>> = Arc::default();
    let failures: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    // /metrics and /healthz.
    let listener =
        tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("lifeboat daemon: {} scheduled job(s); metrics on http://{listen}/metrics", schedules.len());
    {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else { continue };
                let metrics = metrics.clone();
                tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let mut buf = vec![0u8; 4096];
                    let n = sock.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]);
                    let path = req.split_whitespace().nth(1).unwrap_or("/");
                    let (status, ctype, body) = match path {
                        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                        "/metrics" => {
                            let m: Vec<_> = metrics.lock().await.values().cloned().collect();
                            ("200 OK", "text/plain; version=0.0.4", lifeboat::metrics::encode(&m))
                        }
                        _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                });
            }
        });
    }

    let sem = Arc::new(tokio::sync::Semaphore::new(max));
    let running: Arc<Mutex<HashMap<String, tokio::task::JoinHandle<()>>>> = Arc::default();
    let now = chrono::Utc::now();
    let mut next: Vec<chrono::DateTime<chrono::Utc>> = schedules
        .iter()
        .map(|(job, s)| {
            let missed = state.get(&job.name).map(|last| !s.runs_between(*last, now).is_empty()).unwrap_or(false);
            if missed && catch_up {
                tracing::info!(job = %job.name, "catching up a run missed while the daemon was down");
                now
            } else {
                s.next_after(now).unwrap_or(now + chrono::Duration::days(3650))
            }
        })
        .collect();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (i, when) =
            next.iter().enumerate().min_by_key(|(_, t)| **t).map(|(i, t)| (i, *t)).expect("at least one schedule");
        let wait = (when - chrono::Utc::now()).to_std().unwrap_or_default();
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = tokio::time::sleep(wait) => {}
        }
        let (job, sched) = schedules[i].clone();
        next[i] = sched
            .next_after(when.max(chrono::Utc::now() - chrono::Duration::milliseconds(1)))
            .unwrap_or(when + chrono::Duration::days(3650));
        state.insert(job.name.clone(), when);
        if let Some(dir) = state_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = std::fs::write(&state_path, serde_json::to_vec(&state).unwrap_or_default());
        {
            let mut r = running.lock().await;
            if r.get(&job.name).is_some_and(|h| !h.is_finished()) {
                tracing::warn!(job = %job.name, "previous run still going; skipping this one (no overlapping runs)");
                continue;
            }
            let (policy, repo, keys, sem, metrics, failures) =
                (policy.clone(), repo.clone(), keys.clone(), sem.clone(), metrics.clone(), failures.clone());
            let name = job.name.clone();
            let job_name = job.name.clone();
            let handle = tokio::spawn(async move {
                if !jitter.is_zero() {
                    let ms = rand_below(jitter.as_millis() as u64);
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                }
                let Ok(_permit) = sem.acquire_owned().await else { return };
                tracing::info!(job = %name, "run started");
                let (steps, mut m) = run_once(&policy, &job, &repo, &keys, &[]).await;
                let mut f = failures.lock().await;
                let count = f.entry(name.clone()).or_default();
                if !m.success {
                    *count += 1;
                }
                m.failures_total = *count;
                let mut all = metrics.lock().await;
                if m.last_success_timestamp.is_none() {
                    m.last_success_timestamp = all.get(&name).and_then(|old| old.last_success_timestamp);
                }
                for (step, r) in &steps {
                    match r {
                        Ok(d) => tracing::info!(job = %name, step = %step, "{d}"),
                        Err(e) => tracing::error!(job = %name, step = %step, "{e}"),
                    }
                }
                all.insert(name, m);
            });
            r.insert(job_name, handle);
        }
    }
    // Shutdown: abandon in-flight runs; their manifests are never written.
    let mut aborted = 0;
    for (_, h) in running.lock().await.drain() {
        if !h.is_finished() {
            h.abort();
            aborted += 1;
        }
        let _ = h.await;
    }
    eprintln!("lifeboat daemon: stopped ({aborted} run(s) abandoned before commit; no partial snapshot is visible)");
    Ok(ExitCode::SUCCESS)
}

fn rand_below(n: u64) -> u64 {
    if n == 0 {
        return 0;
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    t % n
}

/// Send a webhook alert if the policy has one; problems become warnings.
async fn alert(policy: &Policy, job: &str, kind: &str, reason: String) {
    let Some(hook) = policy.alerts.as_ref().and_then(|a| a.webhook.as_ref()) else { return };
    let text = format!(":rotating_light: lifeboat {kind} *{job}* failed: {reason}");
    let a = lifeboat::metrics::Alert::now(job, kind, text, reason);
    let sent = match lifeboat::policy::resolve_secret(hook) {
        Ok(url) => lifeboat::metrics::send_alert(&url, &a).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = sent {
        eprintln!("warning: the {kind} alert could not be sent: {e}");
    }
}

async fn verify_cmd(a: VerifyArgs, json: bool) -> Result<ExitCode> {
    let policy = Policy::load(&a.policy)?;
    let job = policy.job(&a.job)?.clone();
    let spec = match &a.repository {
        Some(n) => policy
            .repositories
            .iter()
            .find(|r| &r.name == n)
            .ok_or_else(|| anyhow::anyhow!("{}: no [[repository]] named {n:?}", a.policy.display()))?,
        None => {
            policy.repositories.first().ok_or_else(|| anyhow::anyhow!("{}: no [[repository]]", a.policy.display()))?
        }
    };
    let url = spec.repo_url()?;
    let repo = Repository::open(&url).await?;
    let keys = read_keys(&repo, &a.identity, "verifying").await?;
    let o = lifeboat::verify::VerifyOptions {
        repository: spec.name.clone(),
        region: spec.region(),
        repo_url: url.absolute().with_context(|| format!("repository {url}"))?,
        identity_file: a.identity.identity.as_ref().map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
        exe: std::env::current_exe()?,
    };
    let v = lifeboat::verify::verify(&repo, &keys, &job, &a.snapshot, &o).await;
    let record = serde_json::to_value(&v)?;
    for p in lifeboat::drill::store_record(&policy, &spec.name, "verification", &record).await {
        eprintln!("warning: {p}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for c in &v.checks {
            println!("  [{}] {}: {}", if c.ok { "ok" } else { "FAIL" }, c.name, c.detail);
        }
        println!(
            "{} (restore {}, checks {})",
            v.summary(),
            lifeboat::drill::fmt_secs(v.restore_secs),
            lifeboat::drill::fmt_secs(v.verify_secs)
        );
    }
    if !v.ok {
        alert(&policy, &job.name, "verification", v.summary()).await;
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn drill_cmd(a: DrillArgs, json: bool) -> Result<ExitCode> {
    let policy = Policy::load(&a.policy)?;
    let scenarios: Vec<&lifeboat::policy::ScenarioSpec> = match &a.scenario {
        Some(n) => vec![policy.scenarios.iter().find(|s| &s.name == n).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no [[scenario]] named {n:?} (have: {})",
                a.policy.display(),
                policy.scenarios.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
            )
        })?],
        None => policy.scenarios.iter().collect(),
    };
    if scenarios.is_empty() {
        bail!(
            "{}: no [[scenario]] to drill; add one (kind = \"region-loss\" or \"database-loss\")",
            a.policy.display()
        );
    }
    let identity_file = a
        .identity
        .identity
        .clone()
        .ok_or_else(|| lifeboat::Error::NeedIdentity { action: "a drill (it restores)".into() })?;
    let o = lifeboat::drill::DrillOptions { identity_file, exe: std::env::current_exe()? };
    let mut all_ok = true;
    let mut out = Vec::new();
    for s in scenarios {
        let d = lifeboat::drill::run(&policy, s, &o).await?;
        all_ok &= d.ok;
        for p in lifeboat::drill::store_record(&policy, &d.repository, "drill", &serde_json::to_value(&d)?).await {
            eprintln!("warning: {p}");
        }
        if !json {
            print_drill(&d);
        }
        if !d.ok {
            let failed: Vec<String> =
                d.jobs.iter().filter(|j| !j.ok).map(|j| j.error.clone().unwrap_or_else(|| drill_miss(j))).collect();
            alert(&policy, &d.scenario, "drill", failed.join("; ")).await;
        }
        out.push(d);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(if all_ok { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Why a verified job still failed its drill: the targets it missed.
fn drill_miss(j: &lifeboat::drill::DrillJob) -> String {
    use lifeboat::drill::fmt_secs;
    let mut v = Vec::new();
    if j.rto_ok == Some(false) {
        v.push(format!(
            "job {}: RTO {} exceeds the target {}",
            j.job,
            fmt_secs(j.rto_secs.unwrap_or(0.0)),
            fmt_secs(j.rto_target_secs.unwrap_or(0.0))
        ));
    }
    if j.rpo_ok == Some(false) {
        v.push(format!(
            "job {}: RPO {} exceeds the target {}",
            j.job,
            fmt_secs(j.rpo_secs.unwrap_or(0.0)),
            fmt_secs(j.rpo_target_secs.unwrap_or(0.0))
        ));
    }
    v.join("; ")
}

fn print_drill(d: &lifeboat::drill::Drill) {
    use lifeboat::drill::fmt_secs;
    let opt = |v: Option<f64>| v.map(fmt_secs).unwrap_or_else(|| "-".into());
    let verdict = |ok: Option<bool>| match ok {
        Some(true) => "pass",
        Some(false) => "FAIL",
        None => "-",
    };
    println!(
        "drill {:?} ({}) from repository {} ({}), incident at {}",
        d.scenario,
        d.kind,
        d.repository,
        d.region,
        d.incident.format("%Y-%m-%d %H:%M:%S UTC")
    );
    println!(
        "{:<24} {:<9} {:>12} {:>12} {:<5} {:>12} {:>12} {:<5} RESULT",
        "JOB", "SNAPSHOT", "RTO TARGET", "RTO", "", "RPO TARGET", "RPO", ""
    );
    for j in &d.jobs {
        println!(
            "{:<24} {:<9} {:>12} {:>12} {:<5} {:>12} {:>12} {:<5} {}",
            j.job,
            j.snapshot.as_deref().map(|s| &s[..8.min(s.len())]).unwrap_or("-"),
            opt(j.rto_target_secs),
            opt(j.rto_secs),
            verdict(j.rto_ok),
            opt(j.rpo_target_secs),
            opt(j.rpo_secs),
            verdict(j.rpo_ok),
            if j.ok {
                "PASS".to_string()
            } else {
                format!("FAIL: {}", j.error.clone().unwrap_or_else(|| drill_miss(j)))
            }
        );
    }
    println!(
        "{}: {} of {} job(s) passed{}",
        if d.ok { "PASS" } else { "FAIL" },
        d.jobs.iter().filter(|j| j.ok).count(),
        d.jobs.len(),
        d.runbook.as_deref().map(|r| format!("; runbook: {r}")).unwrap_or_default()
    );
}

/// The monthly DR drill report, to stdout or atomically to --output.
async fn report_cmd(a: ReportArgs) -> Result<ExitCode> {
    use lifeboat::report;
    let policy = Policy::load(&a.policy)?;
    let format: report::Format = a.format.parse()?;
    if a.identity.identity.is_none() {
        return Err(lifeboat::Error::NeedIdentity { action: "reading the records for a report".into() }.into());
    }
    let ids = load_identity(&a.identity)?;
    let data = report::gather(&policy, a.repository.as_deref(), ids, a.month, lifeboat::clock::now()).await?;
    let text = report::render(&data, format)?;
    let Some(path) = a.output else {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".lifeboat-report.{}.{}", std::process::id(), hex::encode(rand_bytes())));
    let written = std::fs::write(&tmp, text.as_bytes())
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow::Error::new(e).context(format!("cannot write {}", path.display())));
    }
    eprintln!("{} report for {}: {} ({} reason(s))", a.format, data.title, data.verdict.label(), data.reasons.len());
    println!("{}", path.display());
    Ok(ExitCode::SUCCESS)
}
