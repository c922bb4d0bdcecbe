//! Throwaway servers that `verify` and `drill` restore into.
//!
//! Each one lives in its own temporary directory on free 127.0.0.1 ports and
//! is stopped and deleted when dropped, so a verification never touches a
//! production server and never leaves anything behind.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::source::postgres::Tools;

/// A free TCP port on 127.0.0.1 (the listener is dropped before the server binds it).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::Other(format!("no free port: {e}")))?;
    Ok(l.local_addr().map_err(|e| Error::Other(e.to_string()))?.port())
}

/// A private temporary directory, removed on drop.
#[derive(Debug)]
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(what: &str) -> Result<ScratchDir> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "lifeboat-{what}-{}-{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 4]>())
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::Other(format!("cannot create {}: {e}", dir.display())))?;
        Ok(ScratchDir(dir))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether this process runs as root (PostgreSQL refuses to).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

/// An ephemeral PostgreSQL cluster: `initdb` + `pg_ctl` in a temp dir, trust
/// authentication on 127.0.0.1 only. As root the server runs as the
/// `postgres` user (through `runuser`), as PostgreSQL requires.
pub struct ScratchPostgres {
    dir: ScratchDir,
    tools: Tools,
    as_postgres: bool,
    pub port: u16,
}

impl ScratchPostgres {
    /// Start a cluster with the tools of `major` (Debian's /usr/lib/postgresql/MAJOR/bin, else PATH).
    pub fn start(major: u32, pg_bin: Option<&Path>) -> Result<ScratchPostgres> {
        let tools = Tools::find(pg_bin, major);
        let (have, _) = tools.major("initdb")?;
        if have != major {
            return Err(Error::Other(format!(
                "a scratch PostgreSQL {major} is needed (the snapshot's major version) but initdb is version {have}; install postgresql-{major} or name a scratch server in the job's [job.verify] target"
            )));
        }
        let dir = ScratchDir::new("scratch-pg")?;
        let as_postgres = is_root();
        if as_postgres {
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()), "chown")?;
        }
        let port = free_port()?;
        let s = ScratchPostgres { dir, tools, as_postgres, port };
        let data = s.data();
        let mut initdb = s.cmd("initdb");
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]);
        run(&mut initdb, "initdb")?;
        let mut ctl = s.cmd("pg_ctl");
        ctl.arg("-D").arg(&data).arg("-l").arg(s.dir.path().join("server.log")).args(["-w", "-t", "60", "-o"]).arg(
            format!(
                "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off -c full_page_writes=off",
                s.dir.path().display()
            ),
        );
        ctl.arg("start");
        if let Err(e) = run(&mut ctl, "pg_ctl start") {
            let log = std::fs::read_to_string(s.dir.path().join("server.log")).unwrap_or_default();
            return Err(Error::Other(format!("{e}{}", crate::source::tail(&log))));
        }
        Ok(s)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cmd(&self, tool: &str) -> Command {
        let c = self.tools.command(tool);
        if !self.as_postgres {
            return c;
        }
        let mut r = Command::new("runuser");
        r.args(["-u", "postgres", "--"]).arg(c.get_program());
        r
    }

    /// Connection URL (no password: trust authentication, loopback only).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}", self.port)
    }
}

impl Drop for ScratchPostgres {
    fn drop(&mut self) {
        let mut ctl = self.cmd("pg_ctl");
        ctl.arg("-D").arg(self.data()).args(["-m", "immediate", "-w", "stop"]);
        let _ = ctl.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// An ephemeral redis-server without persistence; with `dir` holding a
/// `dump.rdb` it loads that file at start.
pub struct ScratchRedis {
    child: Child,
    _dir: Option<ScratchDir>,
    pub port: u16,
}

impl ScratchRedis {
    pub fn start(rdb_dir: Option<&Path>) -> Result<ScratchRedis> {
        let own = if rdb_dir.is_none() { Some(ScratchDir::new("scratch-redis")?) } else { None };
        let dir = rdb_dir.map(Path::to_path_buf).or_else(|| own.as_ref().map(|d| d.path().to_path_buf()));
        let dir = dir.ok_or_else(|| Error::Other("no directory for redis-server".into()))?;
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--dbfilename", "dump.rdb", "--dir"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Error::Other(format!("cannot run redis-server for the scratch restore: {e}; install redis-server"))
            })?;
        let mut s = ScratchRedis { child, _dir: own, port };
        // Loading a large RDB takes a while: wait until PING answers PONG (not LOADING).
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(Error::Other(format!(
                    "the scratch redis-server exited with {st} (a corrupt or unsupported dump.rdb?)"
                )));
            }
            if let Ok(c) = redis::Client::open(s.url())
                && let Ok(mut con) = c.get_connection_with_timeout(Duration::from_secs(1))
                && redis::cmd("PING").query::<String>(&mut con).is_ok_and(|p| p == "PONG")
            {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(Error::Other("the scratch redis-server did not come up within 600 s".into()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for ScratchRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Other(format!("cannot run {what} for the scratch server: {e}")))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "{what} failed with {}{}",
            crate::source::describe(out.status),
            crate::source::tail(&String::from_utf8_lossy(&out.stderr))
        )));
    }
    Ok(())
}
