//! PostgreSQL: logical dumps (`pg_dump` in one exported snapshot, with a
//! fingerprint of row counts taken in that same snapshot), physical base
//! backups (`pg_basebackup` as a tar stream) and their restores.
//!
//! Passwords never reach a command line: child tools get the connection
//! through `PG*` environment variables and a temporary 0600 `PGPASSFILE`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use tokio_postgres::config::{Host, SslMode};
use tracing::{info, warn};

use crate::chunker::Layout;
use crate::error::{Error, Result};
use crate::pipeline::{BackupSession, restore_stream, restore_stream_to};
use crate::repo::{Index, Keys, Manifest, Repository};
use crate::scratch::ScratchDir;
use crate::source::{capture, describe, stream_process, tail, wait};

/// Options of a `kind = "postgres"` job.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgOptions {
    /// `all` (every database that accepts connections) or a list of names.
    #[serde(default)]
    pub databases: Option<Databases>,
    /// Tables left out of logical dumps (pg_dump `--exclude-table` patterns).
    #[serde(default)]
    pub exclude_tables: Vec<String>,
    /// Extra pg_dump arguments.
    #[serde(default)]
    pub pg_dump_options: Vec<String>,
    /// Fingerprint row counts: `exact` (default), `estimated` or `off`.
    #[serde(default)]
    pub row_counts: Option<RowCounts>,
    /// Physical mode: cut relation data files into pages (PostgreSQL's block
    /// size) so that a second base backup stores only the changed pages.
    /// Default true in a format 2 repository; false keeps content-defined
    /// chunks (a smaller full backup, larger later ones: docs/PERFORMANCE.md).
    #[serde(default)]
    pub chunk_pages: Option<bool>,
    /// Directory holding pg_dump/pg_restore/pg_basebackup (default: the
    /// server's major version under /usr/lib/postgresql, then PATH).
    #[serde(default)]
    pub pg_bin: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Databases {
    All(String),
    List(Vec<String>),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowCounts {
    #[default]
    Exact,
    Estimated,
    Off,
}

/// A parsed connection string; `Display` never shows the password.
#[derive(Clone)]
pub struct PgTarget {
    cfg: tokio_postgres::Config,
    tls: TlsMode,
    /// `sslrootcert`: PEM file of the CA(s) that sign the server's certificate.
    root_cert: Option<PathBuf>,
}

/// `sslmode`, with libpq's meanings. Without one in the URL: `disable` on
/// loopback and unix sockets (TLS buys nothing there), `verify-full`
/// everywhere else, so a backup never talks to an unverified server unless
/// the URL says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    /// TLS when the server offers it, certificate not checked.
    Prefer,
    /// TLS, certificate not checked (encryption against passive listeners only).
    Require,
    /// TLS, certificate signed by a trusted CA (any name).
    VerifyCa,
    /// TLS, trusted CA and the certificate names the host.
    VerifyFull,
}

impl TlsMode {
    fn parse(s: &str) -> Result<TlsMode> {
        Ok(match s {
            "disable" => TlsMode::Disable,
            "allow" | "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-ca" => TlsMode::VerifyCa,
            "verify-full" => TlsMode::VerifyFull,
            other => {
                return Err(Error::Other(format!(
                    "invalid sslmode {other:?} in the PostgreSQL connection string (disable, prefer, require, verify-ca, verify-full)"
                )));
            }
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer",
            TlsMode::Require => "require",
            TlsMode::VerifyCa => "verify-ca",
            TlsMode::VerifyFull => "verify-full",
        }
    }
}

/// Take the TLS settings tokio-postgres does not know (`sslrootcert`, the
/// verify modes) out of a URL or key=value connection string.
fn split_tls_params(conn: &str) -> Result<(String, Option<String>, Option<String>)> {
    let (mut mode, mut root) = (None, None);
    if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let Ok(mut url) = url::Url::parse(conn) else { return Ok((conn.to_string(), None, None)) };
        let mut rest = Vec::new();
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "sslmode" => mode = Some(v.into_owned()),
                "sslrootcert" => root = Some(v.into_owned()),
                _ => rest.push((k.into_owned(), v.into_owned())),
            }
        }
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
        return Ok((url.to_string(), mode, root));
    }
    let mut kept = Vec::new();
    for token in conn.split_whitespace() {
        match token.split_once('=') {
            Some(("sslmode", v)) => mode = Some(v.trim_matches('\'').to_string()),
            Some(("sslrootcert", v)) => root = Some(v.trim_matches('\'').to_string()),
            _ => kept.push(token),
        }
    }
    Ok((kept.join(" "), mode, root))
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgTarget({self})")
    }
}

impl std::fmt::Display for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "postgres://{}@{}:{}", self.user(), self.host(), self.port())?;
        if let Some(db) = self.cfg.get_dbname() {
            write!(f, "/{db}")?;
        }
        Ok(())
    }
}

/// Strip the password from anything that looks like a connection URL.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<connection string>".into(),
    }
}

impl PgTarget {
    pub fn parse(conn: &str) -> Result<PgTarget> {
        let (rest, mode, root) = split_tls_params(conn)?;
        let cfg: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| Error::Other(format!("invalid PostgreSQL connection string {}: {e}", redact(conn))))?;
        let mut t = PgTarget { cfg, tls: TlsMode::Disable, root_cert: root.map(PathBuf::from) };
        t.tls = match mode {
            Some(m) => TlsMode::parse(&m)?,
            None if t.is_local() => TlsMode::Disable,
            None => TlsMode::VerifyFull,
        };
        if let Some(r) = &t.root_cert
            && !r.is_file()
        {
            return Err(Error::Other(format!("sslrootcert {} is not a readable file", r.display())));
        }
        Ok(t)
    }

    pub fn tls(&self) -> TlsMode {
        self.tls
    }

    pub fn host(&self) -> String {
        match self.cfg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        }
    }
    pub fn port(&self) -> u16 {
        self.cfg.get_ports().first().copied().unwrap_or(5432)
    }
    pub fn user(&self) -> String {
        self.cfg
            .get_user()
            .map(str::to_string)
            .unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "postgres".into()))
    }
    pub fn dbname(&self) -> Option<&str> {
        self.cfg.get_dbname()
    }

    /// Connect to `db` (default: the URL's database, else `postgres`).
    pub async fn connect(&self, db: Option<&str>) -> Result<tokio_postgres::Client> {
        let mut cfg = self.cfg.clone();
        let dbname = db
            .map(str::to_string)
            .or_else(|| self.cfg.get_dbname().map(str::to_string))
            .unwrap_or_else(|| "postgres".into());
        cfg.dbname(&dbname);
        use futures::FutureExt;
        // The connection's driver runs as its own task; both arms box it.
        let res = if self.tls == TlsMode::Disable {
            cfg.ssl_mode(SslMode::Disable);
            cfg.connect(tokio_postgres::NoTls).await.map(|(c, conn)| (c, conn.boxed()))
        } else {
            cfg.ssl_mode(if self.tls == TlsMode::Prefer { SslMode::Prefer } else { SslMode::Require });
            let verify = matches!(self.tls, TlsMode::VerifyCa | TlsMode::VerifyFull);
            let tls = crate::crypto::pg_tls_config(verify, self.tls == TlsMode::VerifyFull, self.root_cert.as_deref())?;
            cfg.connect(tokio_postgres_rustls::MakeRustlsConnect::new(tls)).await.map(|(c, conn)| (c, conn.boxed()))
        };
        let res = res.map(|(c, driver)| {
            tokio::spawn(async move {
                if let Err(e) = driver.await {
                    warn!("postgres connection: {e}");
                }
            });
            c
        });
        res.map_err(|e| self.connect_error(&dbname, e))
    }

    fn is_local(&self) -> bool {
        matches!(self.cfg.get_hosts().first(), Some(Host::Unix(_)))
            || matches!(self.host().as_str(), "127.0.0.1" | "localhost" | "::1")
    }

    fn connect_error(&self, db: &str, e: tokio_postgres::Error) -> Error {
        let at = format!("{}:{}", self.host(), self.port());
        let detail = match e.as_db_error() {
            Some(d) if d.code().code() == "28P01" => {
                format!(
                    "PostgreSQL at {at} rejected the password for user {:?}; check the secret the job's url points to",
                    self.user()
                )
            }
            Some(d) if d.code().code() == "3D000" => format!("database {db:?} does not exist on {at}"),
            Some(d) if d.code().code() == "28000" => {
                format!("PostgreSQL at {at} refused user {:?}: {}", self.user(), d.message())
            }
            Some(d) => format!("PostgreSQL at {at}: {}", d.message()),
            None => {
                let mut cur: &dyn std::error::Error = &e;
                while let Some(n) = cur.source() {
                    cur = n;
                }
                let msg = cur.to_string();
                let hint = if msg.contains("not valid for name") {
                    format!(
                        " (sslmode {}): the server's certificate does not name this host; connect by a name it holds, or use sslmode=verify-ca to check the CA only",
                        self.tls.as_str()
                    )
                } else if msg.contains("certificate") || msg.contains("UnknownIssuer") {
                    format!(
                        " (sslmode {}): name the CA that signs the server's certificate with sslrootcert=FILE in the URL, or use sslmode=require to encrypt without checking who answers",
                        self.tls.as_str()
                    )
                } else if msg.contains("server does not support TLS") {
                    format!(
                        " (sslmode {}): enable ssl on the server, or add sslmode=disable to the URL to connect in plain text",
                        self.tls.as_str()
                    )
                } else {
                    String::new()
                };
                format!("cannot reach PostgreSQL at {at}: {msg}{hint}")
            }
        };
        Error::Source { source_name: "postgres".into(), detail }
    }

    /// Environment for child tools (pg_dump…): no password on any command line.
    pub fn tool_env(&self, db: Option<&str>) -> Result<ToolEnv> {
        let mut vars = vec![
            ("PGHOST".to_string(), self.host()),
            ("PGPORT".to_string(), self.port().to_string()),
            ("PGUSER".to_string(), self.user()),
            ("PGAPPNAME".to_string(), "lifeboat".to_string()),
        ];
        if let Some(db) = db.or(self.cfg.get_dbname()) {
            vars.push(("PGDATABASE".into(), db.to_string()));
        }
        vars.push(("PGSSLMODE".into(), self.tls.as_str().into()));
        match &self.root_cert {
            Some(r) => vars.push(("PGSSLROOTCERT".into(), r.display().to_string())),
            // libpq 15 has no sslrootcert=system: hand it the system bundle.
            None if matches!(self.tls, TlsMode::VerifyCa | TlsMode::VerifyFull) => {
                let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
                if bundle.is_file() {
                    vars.push(("PGSSLROOTCERT".into(), bundle.display().to_string()));
                }
            }
            None => {}
        }
        let mut passfile = None;
        if let Some(pw) = self.cfg.get_password() {
            let dir = ScratchDir::new("pgpass")?;
            let path = dir.path().join("pgpass");
            let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
            let line = format!("*:*:*:*:{}\n", esc(&String::from_utf8_lossy(pw)));
            crate::crypto::write_secret_file(&path, &line)
                .map_err(|e| Error::Other(format!("cannot write a temporary PGPASSFILE: {e}")))?;
            vars.push(("PGPASSFILE".into(), path.display().to_string()));
            passfile = Some(dir);
        }
        Ok(ToolEnv { vars, _dir: passfile })
    }
}

/// Connection environment for a child process; removes its PGPASSFILE when dropped.
pub struct ToolEnv {
    vars: Vec<(String, String)>,
    _dir: Option<ScratchDir>,
}

impl ToolEnv {
    pub fn apply(&self, cmd: &mut Command) {
        for k in ["PGPASSWORD", "PGSERVICE", "DATABASE_URL"] {
            cmd.env_remove(k);
        }
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
    }
}

/// PostgreSQL client tools of a given major version.
#[derive(Debug, Clone)]
pub struct Tools {
    pub bin: Option<PathBuf>,
}

impl Tools {
    /// Prefer an explicit directory, then the server's major version under
    /// /usr/lib/postgresql (Debian's layout), then PATH.
    pub fn find(explicit: Option<&Path>, server_major: u32) -> Tools {
        if let Some(p) = explicit {
            return Tools { bin: Some(p.to_path_buf()) };
        }
        let debian = PathBuf::from(format!("/usr/lib/postgresql/{server_major}/bin"));
        if debian.join("pg_dump").exists() {
            return Tools { bin: Some(debian) };
        }
        Tools { bin: None }
    }

    pub fn command(&self, tool: &str) -> Command {
        match &self.bin {
            Some(b) => Command::new(b.join(tool)),
            None => Command::new(tool),
        }
    }

    /// Major version of a tool (`pg_dump (PostgreSQL) 15.18` → 15).
    pub fn major(&self, tool: &str) -> Result<(u32, String)> {
        let out = self.command(tool).arg("--version").output().map_err(|e| Error::Source {
            source_name: "postgres".into(),
            detail: format!("cannot run {tool}: {e}; install the PostgreSQL client tools or set pg_bin in the job"),
        })?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let ver = text.rsplit(' ').next().unwrap_or("").to_string();
        let major = ver.split(['.', ' ']).next().and_then(|m| m.parse().ok()).ok_or_else(|| Error::Source {
            source_name: "postgres".into(),
            detail: format!("cannot read the version of {tool} from {text:?}"),
        })?;
        Ok((major, ver))
    }

    /// Refuse a tool older than the server: it cannot dump it correctly.
    pub fn check_version(&self, tool: &str, server_major: u32, server_version: &str) -> Result<String> {
        let (major, ver) = self.major(tool)?;
        if major < server_major {
            return Err(Error::Source {
                source_name: "postgres".into(),
                detail: format!(
                    "{tool} {ver} is older than the server (PostgreSQL {server_version}); install the version {server_major} client tools (Debian: postgresql-client-{server_major}) or point pg_bin at them"
                ),
            });
        }
        Ok(ver)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableFingerprint {
    pub schema: String,
    pub name: String,
    /// Exact or estimated per `row_counts`; absent when off.
    pub rows: Option<i64>,
    pub bytes: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseFingerprint {
    pub name: String,
    pub snapshot_time: chrono::DateTime<chrono::Utc>,
    pub row_counts: RowCounts,
    pub size_bytes: i64,
    pub tables: Vec<TableFingerprint>,
}

async fn server_version(c: &tokio_postgres::Client) -> Result<(u32, String)> {
    let row = c
        .query_one("select current_setting('server_version_num')::int, current_setting('server_version')", &[])
        .await
        .map_err(sql_err)?;
    let num: i32 = row.get(0);
    let text: String = row.get(1);
    Ok(((num / 10000) as u32, text.split(' ').next().unwrap_or(&text).to_string()))
}

fn sql_err(e: tokio_postgres::Error) -> Error {
    let msg = e.as_db_error().map(|d| d.message().to_string()).unwrap_or_else(|| e.to_string());
    Error::Source { source_name: "postgres".into(), detail: msg }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Tables, row counts and sizes, read inside the caller's transaction.
pub async fn fingerprint(
    c: &tokio_postgres::Client,
    mode: RowCounts,
    exclude: &[String],
) -> Result<Vec<TableFingerprint>> {
    let rows = c
        .query(
            "select n.nspname::text, c.relname::text, c.reltuples::bigint, pg_total_relation_size(c.oid)
               from pg_class c join pg_namespace n on n.oid = c.relnamespace
              where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema')
                and n.nspname not like 'pg_toast%' and n.nspname not like 'pg_temp%'
              order by 1, 2",
            &[],
        )
        .await
        .map_err(sql_err)?;
    let mut out = Vec::new();
    for r in rows {
        let schema: String = r.get(0);
        let name: String = r.get(1);
        if exclude.iter().any(|x| x == &name || *x == format!("{schema}.{name}")) {
            continue;
        }
        let est: i64 = r.get(2);
        let rows = match mode {
            RowCounts::Off => None,
            RowCounts::Estimated => Some(est.max(0)),
            RowCounts::Exact => {
                let q = format!("select count(*) from {}.{}", quote_ident(&schema), quote_ident(&name));
                Some(c.query_one(&q, &[]).await.map_err(sql_err)?.get::<_, i64>(0))
            }
        };
        out.push(TableFingerprint { schema, name, rows, bytes: r.get(3) });
    }
    Ok(out)
}

/// Logical backup: globals, then each database with pg_dump in an exported
/// snapshot; the fingerprint is read in that same snapshot.
pub async fn backup_logical(
    session: &mut BackupSession,
    job: &str,
    conn: &str,
    opts: &PgOptions,
) -> Result<serde_json::Value> {
    let target = PgTarget::parse(conn)?;
    let admin = target.connect(None).await?;
    let (major, version) = server_version(&admin).await?;
    let tools = Tools::find(opts.pg_bin.as_deref(), major);
    let dump_version = tools.check_version("pg_dump", major, &version)?;
    let databases: Vec<String> = match &opts.databases {
        Some(Databases::List(l)) => l.clone(),
        Some(Databases::All(a)) if a == "all" => admin
            .query("select datname::text from pg_database where datallowconn and not datistemplate order by 1", &[])
            .await
            .map_err(sql_err)?
            .iter()
            .map(|r| r.get(0))
            .collect(),
        Some(Databases::All(one)) => vec![one.clone()],
        None => vec![target.dbname().unwrap_or("postgres").to_string()],
    };
    drop(admin);
    let mode = opts.row_counts.unwrap_or_default();

    // Globals (roles, tablespaces): plain SQL.
    let env = target.tool_env(None)?;
    let mut cmd = tools.command("pg_dumpall");
    cmd.arg("--globals-only");
    env.apply(&mut cmd);
    let globals = match stream_process(session, "globals.sql", cmd, job, Layout::Cdc).await {
        Ok(_) => true,
        Err(e) => return Err(e),
    };

    let mut fps = Vec::new();
    for db in &databases {
        let client = target.connect(Some(db)).await?;
        client.batch_execute("begin isolation level repeatable read read only").await.map_err(sql_err)?;
        let row = client.query_one("select pg_export_snapshot(), now()", &[]).await.map_err(sql_err)?;
        let snap: String = row.get(0);
        let snapshot_time: chrono::DateTime<chrono::Utc> = row.get(1);
        let mut cmd = tools.command("pg_dump");
        // Custom format, uncompressed: lifeboat compresses after chunking,
        // and compressed input would defeat deduplication.
        cmd.args(["--format=custom", "--compress=0", "--snapshot", &snap]);
        for t in &opts.exclude_tables {
            cmd.arg(format!("--exclude-table={t}"));
        }
        cmd.args(&opts.pg_dump_options);
        let env = target.tool_env(Some(db))?;
        env.apply(&mut cmd);
        // The fingerprint's counts run in the exporting transaction, beside
        // pg_dump rather than before it: same snapshot, and the count(*)
        // scans no longer add to the backup's wall time.
        let counts = async {
            let tables = fingerprint(&client, mode, &opts.exclude_tables).await?;
            let size: i64 =
                client.query_one("select pg_database_size(current_database())", &[]).await.map_err(sql_err)?.get(0);
            Ok::<_, Error>((tables, size))
        };
        let stream_name = format!("db/{db}");
        let (dumped, counted) = tokio::join!(stream_process(session, &stream_name, cmd, job, Layout::Cdc), counts);
        dumped?;
        let (tables, size) = counted?;
        // The exporting transaction must stay open until pg_dump is done.
        client.batch_execute("commit").await.map_err(sql_err)?;
        info!(db = %db, tables = tables.len(), "database dumped");
        fps.push(DatabaseFingerprint { name: db.clone(), snapshot_time, row_counts: mode, size_bytes: size, tables });
    }
    Ok(serde_json::json!({
        "mode": "logical",
        "format": "pg_dump-custom",
        "server_version": version,
        "server_major": major,
        "pg_dump_version": dump_version,
        "globals": globals,
        "databases": fps,
    }))
}

/// Which database stream of a logical snapshot to restore.
pub fn pick_database<'a>(m: &'a Manifest, database: Option<&str>) -> Result<&'a crate::repo::StreamManifest> {
    let dbs: Vec<&crate::repo::StreamManifest> = m.streams.iter().filter(|s| s.name.starts_with("db/")).collect();
    match database {
        Some(d) => dbs
            .into_iter()
            .find(|s| s.name == format!("db/{d}"))
            .ok_or_else(|| Error::Other(format!("snapshot {} has no database {d:?}", m.short_id()))),
        None if dbs.len() == 1 => Ok(dbs[0]),
        None => Err(Error::Other(format!(
            "snapshot {} holds {} databases ({}); pick one with --database NAME",
            m.short_id(),
            dbs.len(),
            dbs.iter().map(|s| &s.name[3..]).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Restore one database of a logical snapshot into a server.
#[allow(clippy::too_many_arguments)] // the CLI's options, passed through
pub async fn restore_logical(
    repo: &Repository,
    keys: &Keys,
    index: &Index,
    m: &Manifest,
    conn: &str,
    database: Option<&str>,
    clean: bool,
    jobs: u32,
) -> Result<serde_json::Value> {
    let stream = pick_database(m, database)?;
    let source_db = &stream.name[3..];
    let target = PgTarget::parse(conn)?;
    let dbname = target.dbname().unwrap_or(source_db).to_string();
    let admin = target.connect(Some("postgres")).await?;
    let (major, version) = server_version(&admin).await?;
    let tools = Tools::find(None, major);
    tools.check_version("pg_restore", major, &version)?;
    let exists =
        admin.query_opt("select 1 from pg_database where datname = $1", &[&dbname]).await.map_err(sql_err)?.is_some();
    if exists {
        let db = target.connect(Some(&dbname)).await?;
        let n: i64 = db
            .query_one(
                "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace
                  where n.nspname not in ('pg_catalog', 'information_schema') and n.nspname not like 'pg_toast%'
                    and c.relkind in ('r', 'p', 'v', 'm', 'S', 'f')",
                &[],
            )
            .await
            .map_err(sql_err)?
            .get(0);
        drop(db);
        if n > 0 && !clean {
            return Err(Error::Other(format!(
                "target database {dbname:?} on {}:{} is not empty ({n} relations); restore into a new database name, or pass --clean to drop and recreate it",
                target.host(),
                target.port()
            )));
        }
        if n > 0 || clean {
            admin
                .batch_execute(&format!("drop database {} with (force)", quote_ident(&dbname)))
                .await
                .map_err(sql_err)?;
            admin.batch_execute(&format!("create database {}", quote_ident(&dbname))).await.map_err(sql_err)?;
        }
    } else {
        admin.batch_execute(&format!("create database {}", quote_ident(&dbname))).await.map_err(sql_err)?;
    }
    drop(admin);

    let env = target.tool_env(Some(&dbname))?;
    let started = std::time::Instant::now();
    if jobs > 1 {
        // Parallel pg_restore needs a seekable file.
        let dir = ScratchDir::new("pg-restore")?;
        let file = dir.path().join("dump");
        let f = std::fs::File::create(&file).map_err(Error::Output)?;
        restore_stream(repo, keys, index, &m.id, stream, f).await?;
        let mut cmd = tools.command("pg_restore");
        cmd.args(["--exit-on-error", "--jobs", &jobs.to_string(), "--dbname", &dbname]).arg(&file);
        env.apply(&mut cmd);
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await
            .map_err(|e| Error::Other(e.to_string()))?
            .map_err(|e| Error::Other(format!("cannot run pg_restore: {e}")))?;
        if !out.status.success() {
            return Err(Error::Other(format!(
                "pg_restore failed with {}{}",
                describe(out.status),
                tail(&String::from_utf8_lossy(&out.stderr))
            )));
        }
    } else {
        let mut cmd = tools.command("pg_restore");
        cmd.args(["--exit-on-error", "--dbname", &dbname])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        env.apply(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| Error::Other(format!("cannot run pg_restore: {e}")))?;
        let stdin = child.stdin.take().ok_or_else(|| Error::Other("no stdin pipe".into()))?;
        crate::source::widen_pipe(&stdin);
        let stderr = capture(child.stderr.take());
        let r = restore_stream(repo, keys, index, &m.id, stream, stdin).await;
        let status = wait(child, false).await?;
        let err = stderr.join().unwrap_or_default();
        if !status.success() {
            return Err(Error::Other(format!(
                "pg_restore into {dbname:?} failed with {}{}",
                describe(status),
                tail(&err)
            )));
        }
        r?;
    }
    Ok(
        serde_json::json!({"database": dbname, "source_database": source_db, "seconds": started.elapsed().as_secs_f64()}),
    )
}

/// Row counts of a restored database, in the fingerprint's shape.
pub async fn current_fingerprint(conn: &str, db: &str, mode: RowCounts) -> Result<Vec<TableFingerprint>> {
    let target = PgTarget::parse(conn)?;
    let c = target.connect(Some(db)).await?;
    fingerprint(&c, mode, &[]).await
}

/// Whether a physical backup cuts data files into pages when the policy does
/// not say: yes in a repository with shared frames (format 2), where a page
/// chunk costs ~13 % more on the first backup and the next base backup after
/// spread updates stores 0.64x what pgBackRest's incremental does (measured
/// in docs/PERFORMANCE.md); no in a format 1 repository, where every page
/// would be its own zstd frame (1.5x the first backup, a slower restore).
pub fn default_chunk_pages(session: &BackupSession) -> bool {
    session.shared_frames()
}

/// Physical backup: `pg_basebackup` of the whole cluster as one tar stream
/// (WAL needed for consistency included), with its LSNs and timeline.
pub async fn backup_physical(
    session: &mut BackupSession,
    job: &str,
    conn: &str,
    opts: &PgOptions,
) -> Result<serde_json::Value> {
    let target = PgTarget::parse(conn)?;
    let admin = target.connect(None).await?;
    let (major, version) = server_version(&admin).await?;
    let seg_size: i64 = admin
        .query_one("select setting::bigint from pg_settings where name = 'wal_segment_size'", &[])
        .await
        .map_err(sql_err)?
        .get(0);
    let archive_mode: String =
        admin.query_one("select current_setting('archive_mode')", &[]).await.map_err(sql_err)?.get(0);
    // With pages (the default), data files are cut into pages: a second
    // base backup then stores only the pages that changed. (Sizing the cluster stats
    // every file, so it is only done when pages are wanted.)
    let layout = if opts.chunk_pages.unwrap_or_else(|| default_chunk_pages(session)) {
        let block_size: String =
            admin.query_one("select current_setting('block_size')", &[]).await.map_err(sql_err)?.get(0);
        let cluster_bytes: i64 = admin
            .query_one(
                "select coalesce(sum(pg_database_size(oid)), 0)::bigint from pg_database where datallowconn",
                &[],
            )
            .await
            .map_err(sql_err)?
            .get(0);
        Layout::postgres_pages(block_size.parse().unwrap_or(8192), cluster_bytes.max(0) as u64)
    } else {
        Layout::Cdc
    };
    drop(admin);
    let tools = Tools::find(opts.pg_bin.as_deref(), major);
    let tool_version = tools.check_version("pg_basebackup", major, &version)?;
    let mut cmd = tools.command("pg_basebackup");
    cmd.args(["--pgdata=-", "--format=tar", "--wal-method=fetch", "--checkpoint=fast", "--verbose", "--no-password"]);
    let started = crate::clock::now();
    let env = target.tool_env(None)?;
    env.apply(&mut cmd);
    let (_, stderr) = stream_process(session, "base.tar", cmd, job, layout).await?;
    let find =
        |marker: &str| stderr.lines().find_map(|l| l.split_once(marker).map(|(_, rest)| rest.trim().to_string()));
    let start = find("write-ahead log start point:").unwrap_or_default();
    let (start_lsn, timeline) = match start.split_once(" on timeline ") {
        Some((l, t)) => (l.trim().to_string(), t.trim().parse::<u32>().unwrap_or(1)),
        None => (start.clone(), 1),
    };
    let stop_lsn = find("write-ahead log end point:").unwrap_or_default();
    let start_segment = crate::source::wal::parse_lsn(&start_lsn)
        .map(|l| crate::source::wal::segment_of(l, timeline, seg_size as u64))
        .unwrap_or_default();
    if start_segment.is_empty() {
        warn!(
            "pg_basebackup did not report its start LSN; point-in-time restore will not be able to check the WAL archive"
        );
    }
    Ok(serde_json::json!({
        "mode": "physical",
        "format": "pg_basebackup-tar",
        "server_version": version,
        "server_major": major,
        "pg_basebackup_version": tool_version,
        "start_time": started,
        "start_lsn": start_lsn,
        "stop_lsn": stop_lsn,
        "timeline": timeline,
        "start_segment": start_segment,
        "wal_segment_size": seg_size,
        "archive_mode": archive_mode,
        "wal_archive": job,
        "page_chunk_bytes": match layout { Layout::TarPages { page } => Some(page), Layout::Cdc => None },
    }))
}

/// How a physical restore should recover.
#[derive(Debug, Clone, Default)]
pub struct PitrOptions {
    pub at: Option<chrono::DateTime<chrono::Utc>>,
    pub lsn: Option<String>,
    pub start: bool,
    pub port: u16,
    /// Absolute path of the lifeboat binary for restore_command.
    pub exe: PathBuf,
    /// Repository URL and identity file restore_command uses.
    pub repo_url: String,
    pub identity: PathBuf,
    pub wait_secs: u64,
}

/// Lay out a base backup, configure recovery from the WAL archive, and
/// optionally start the server and wait until recovery has finished.
pub async fn restore_physical(
    repo: &Repository,
    keys: &Keys,
    index: &Index,
    m: &Manifest,
    dir: &Path,
    o: &PitrOptions,
) -> Result<serde_json::Value> {
    use crate::source::wal;
    let src = &m.source;
    let cluster = src["wal_archive"].as_str().unwrap_or(&m.name).to_string();
    let seg_size = src["wal_segment_size"].as_u64().unwrap_or(16 << 20);
    let start_segment = src["start_segment"].as_str().unwrap_or_default().to_string();
    let stream = m
        .streams
        .iter()
        .find(|s| s.name == "base.tar")
        .ok_or_else(|| Error::Other(format!("snapshot {} is not a physical PostgreSQL backup", m.short_id())))?;
    if o.start && crate::scratch::is_root() {
        return Err(Error::Other("PostgreSQL cannot run as root: run `lifeboat restore … --start` as the postgres user (e.g. runuser -u postgres --)".into()));
    }
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(Error::Other(format!("{} is not empty; restore into a new or empty directory", dir.display())));
    }

    // Check the archive before touching anything: name the hole, if any.
    let archived = wal::list(repo, &cluster).await?;
    let reach = wal::reach(&archived, &start_segment, seg_size);
    let base_end = m.finished;
    let reachable = reach.last_time.unwrap_or(base_end).max(base_end);
    if let Some(gap) = &reach.gap {
        let wants_past_gap = match o.at {
            Some(t) => t > reachable,
            None => o.lsn.is_none(),
        };
        if wants_past_gap {
            return Err(Error::Other(format!(
                "WAL segment {gap} is missing from the archive {cluster:?}; recovery can only reach {} (last segment {}, archived {}). Restore with --at {} or earlier, or find the missing segment",
                reachable.to_rfc3339(),
                reach.last_segment.as_deref().unwrap_or("(none)"),
                reachable.to_rfc3339(),
                reachable.format("%Y-%m-%dT%H:%M:%SZ")
            )));
        }
    }
    if let Some(t) = o.at
        && t < m.started
    {
        return Err(Error::Other(format!(
            "--at {} is before this base backup started ({}); pick an older snapshot",
            t.to_rfc3339(),
            m.started.to_rfc3339()
        )));
    }

    std::fs::create_dir_all(dir).map_err(Error::Output)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(Error::Output)?;
    }
    // Extracted in-process: file data goes from the decoded runs to disk in
    // one write per file piece, on writer threads (see crate::tar), which
    // shortens the RTO.
    let t_extract = std::time::Instant::now();
    let (_, extractor) = restore_stream_to(repo, keys, index, &m.id, stream, crate::tar::Extractor::new(dir)).await?;
    let (files, bytes) = extractor
        .finish()
        .map_err(|e| Error::Other(format!("base backup in snapshot {} does not extract: {e}", m.short_id())))?;
    let extract_secs = t_extract.elapsed().as_secs_f64();
    tracing::debug!(files, bytes, extract_secs, dir = %dir.display(), "base backup extracted");

    // Recovery settings: later lines in postgresql.auto.conf win.
    let q = |s: &str| s.replace('\'', "''");
    let restore_cmd = format!(
        "LIFEBOAT_IDENTITY_FILE=\"{}\" \"{}\" wal fetch --repo \"{}\" --archive \"{}\" \"%f\" \"%p\"",
        o.identity.display(),
        o.exe.display(),
        o.repo_url,
        cluster
    );
    let mut conf = String::from("\n# added by lifeboat restore\n");
    conf.push_str(&format!("restore_command = '{}'\n", q(&restore_cmd)));
    conf.push_str("archive_mode = 'off'\n");
    if let Some(t) = o.at {
        conf.push_str(&format!("recovery_target_time = '{}'\n", t.format("%Y-%m-%d %H:%M:%S%.6f+00")));
        conf.push_str("recovery_target_action = 'promote'\n");
    } else if let Some(l) = &o.lsn {
        conf.push_str(&format!("recovery_target_lsn = '{}'\n", q(l)));
        conf.push_str("recovery_target_action = 'promote'\n");
    }
    let auto = dir.join("postgresql.auto.conf");
    let mut existing = std::fs::read_to_string(&auto).unwrap_or_default();
    existing.push_str(&conf);
    std::fs::write(&auto, existing).map_err(Error::Output)?;
    std::fs::write(dir.join("recovery.signal"), b"").map_err(Error::Output)?;
    let _ = std::fs::remove_file(dir.join("postmaster.pid"));

    let mut result = serde_json::json!({
        "data_dir": dir,
        "target_time": o.at,
        "target_lsn": o.lsn,
        "newest_recoverable": reachable,
        "wal_last_segment": reach.last_segment,
        "extracted_in_secs": extract_secs,
        "files": files,
        "bytes": bytes,
    });
    if o.start {
        let major = src["server_major"].as_u64().unwrap_or(15) as u32;
        let tools = Tools::find(None, major);
        let t0 = std::time::Instant::now();
        start_and_wait(&tools, dir, o.port, o.wait_secs).await?;
        result["recovered_in_secs"] = serde_json::json!(t0.elapsed().as_secs_f64());
        result["port"] = serde_json::json!(o.port);
    }
    Ok(result)
}

/// Start a restored cluster and wait until recovery is over (promoted).
pub async fn start_and_wait(tools: &Tools, dir: &Path, port: u16, wait_secs: u64) -> Result<()> {
    let log = dir.join("lifeboat-recovery.log");
    let sock = std::env::temp_dir();
    let mut cmd = tools.command("pg_ctl");
    cmd.arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(&log)
        .args(["-w", "-t", "120", "-o"])
        .arg(format!("-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}", sock.display()));
    cmd.arg("start").stdout(Stdio::null()).stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| Error::Other(e.to_string()))?
        .map_err(|e| Error::Other(format!("cannot run pg_ctl: {e}")))?;
    let log_tail = || tail(&std::fs::read_to_string(&log).unwrap_or_default());
    if !out.status.success() {
        return Err(Error::Other(format!("the restored server did not start{}", log_tail())));
    }
    let mut cfg = tokio_postgres::Config::new();
    cfg.host_path(&sock).port(port).dbname("postgres").user(os_user());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_secs);
    loop {
        if let Ok((c, conn)) = cfg.connect(tokio_postgres::NoTls).await {
            tokio::spawn(conn);
            if let Ok(row) = c.query_one("select pg_is_in_recovery()", &[]).await
                && !row.get::<_, bool>(0)
            {
                return Ok(());
            }
        }
        let pid_alive = dir.join("postmaster.pid").exists();
        if !pid_alive {
            return Err(Error::Other(format!("recovery failed and the server stopped{}", log_tail())));
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::Other(format!("recovery did not finish within {wait_secs}s{}", log_tail())));
        }
        // Recovery ends at an unknown moment and the wait is the RTO: poll often.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The operating-system user (the role a local trust/peer connection uses).
pub fn os_user() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| {
        // runuser may not set USER; fall back to the name of our uid.
        let uid = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            })
            .unwrap_or_default();
        std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|p| {
                p.lines()
                    .find(|l| l.split(':').nth(2) == Some(uid.as_str()))
                    .and_then(|l| l.split(':').next().map(str::to_string))
            })
            .unwrap_or_else(|| "postgres".into())
    })
}
