//! etcd: snapshots through the v3 maintenance API, and restores to a data
//! directory from which a new member starts.
//!
//! * **Backup** connects with `etcd-client` (gRPC; client TLS with a CA, a
//!   client certificate and key), reads the member's status (version,
//!   revision, db size) and key count, then streams `Maintenance.Snapshot`
//!   straight into the pipeline. The server appends a SHA-256 of the
//!   database to the snapshot; lifeboat hashes the stream as it passes and
//!   refuses to commit a snapshot whose hash does not match.
//! * **Restore** (`--to-dir DIR`) writes the snapshot file and drives the
//!   etcd tools to turn it into a data directory: `etcdutl snapshot restore`
//!   (etcd ≥ 3.5) or, where only etcd 3.4 is installed (Debian 12),
//!   `etcdctl snapshot restore`. Both check the integrity hash again and
//!   rewrite the membership so the data directory starts as a new
//!   single-member cluster. lifeboat does not rewrite bbolt files itself.
//! * [`check_data_dir`] starts a throwaway `etcd` on free 127.0.0.1 ports
//!   from a data directory, counts its keys and reads its revision.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tracing::{debug, info, info_span, warn};

use crate::error::{Error, Result};
use crate::pipeline::{BackupSession, restore_stream};
use crate::repo::{Index, Keys, Manifest, Repository};
use crate::scratch::free_port;

/// The one stream of an etcd snapshot.
pub const STREAM: &str = "snapshot.db";

fn src_err(detail: impl Into<String>) -> Error {
    Error::Source { source_name: "etcd".into(), detail: detail.into() }
}

/// How to reach etcd (the `etcd` job's fields; paths, not contents).
#[derive(Debug, Clone, Default)]
pub struct EtcdOptions {
    /// `http://host:2379` or `https://…` (several: the first that answers).
    pub endpoints: Vec<String>,
    /// CA bundle to verify the server.
    pub cacert: Option<PathBuf>,
    /// Client certificate and key (mutual TLS).
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

fn read_file(what: &str, p: &Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| src_err(format!("cannot read the {what} {}: {e}", p.display())))
}

/// Connect (with TLS when a CA or client certificate is given, or an endpoint is https).
pub async fn connect(opts: &EtcdOptions) -> Result<Client> {
    if opts.endpoints.is_empty() {
        return Err(Error::Policy("an etcd job needs endpoints = [\"https://host:2379\"]".into()));
    }
    let tls = opts.cacert.is_some() || opts.cert.is_some() || opts.endpoints.iter().any(|e| e.starts_with("https://"));
    let mut co =
        ConnectOptions::new().with_connect_timeout(Duration::from_secs(10)).with_timeout(Duration::from_secs(60));
    if tls {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut t = TlsOptions::new();
        if let Some(ca) = &opts.cacert {
            t = t.ca_certificate(Certificate::from_pem(read_file("CA bundle", ca)?));
        } else {
            return Err(Error::Policy(
                "etcd over TLS needs cacert = \"PATH\" (the CA that signed the etcd server certificate)".into(),
            ));
        }
        match (&opts.cert, &opts.key) {
            (Some(c), Some(k)) => {
                t = t.identity(Identity::from_pem(read_file("client certificate", c)?, read_file("client key", k)?));
            }
            (None, None) => {}
            _ => return Err(Error::Policy("etcd: cert and key go together (client TLS needs both)".into())),
        }
        co = co.with_tls(t);
    }
    let eps = opts.endpoints.join(", ");
    let mut client = Client::connect(&opts.endpoints, Some(co))
        .await
        .map_err(|e| src_err(format!("cannot connect to etcd at {eps}: {}", chain(&e))))?;
    // The channel connects lazily: make a call so a TLS or auth failure shows here.
    client.status().await.map_err(|e| {
        src_err(format!(
            "etcd at {eps} did not answer: {}; check the endpoints and the TLS files (cacert, cert, key)",
            chain(&e)
        ))
    })?;
    Ok(client)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// What a snapshot's metadata records.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotInfo {
    pub endpoint: String,
    pub version: String,
    /// The store revision when the snapshot started.
    pub revision: i64,
    pub db_size: i64,
    pub keys: i64,
    pub member_id: u64,
    /// The SHA-256 the server appended to the snapshot (hex), checked against the data.
    pub sha256: String,
    pub snapshot_bytes: u64,
}

/// An `etcd` job: stream a snapshot into the session. Returns the source metadata.
pub async fn backup(session: &mut BackupSession, opts: &EtcdOptions) -> Result<Value> {
    let span = info_span!("etcd_snapshot");
    let _g = span.enter();
    let mut client = connect(opts).await?;
    let status = client.status().await.map_err(|e| src_err(format!("status: {}", chain(&e))))?;
    let revision = status.header().map(|h| h.revision()).unwrap_or_default();
    let member_id = status.header().map(|h| h.member_id()).unwrap_or_default();
    let keys = client
        .get(vec![0u8], Some(GetOptions::new().with_all_keys().with_count_only()))
        .await
        .map(|r| r.count())
        .map_err(|e| src_err(format!("counting keys: {}", chain(&e))))?;
    info!(version = status.version(), revision, db_size = status.db_size(), keys, "etcd status");
    let mut stream = client.snapshot().await.map_err(|e| src_err(format!("snapshot: {}", chain(&e))))?;

    // Messages go through a bounded channel to the pipeline's blocking reader;
    // the reader hashes all but the last 32 bytes and compares them at the end.
    let (tx, rx) = std::sync::mpsc::sync_channel::<std::result::Result<Vec<u8>, String>>(4);
    let pump = tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(m)) => {
                    if tx.send(Ok(m.blob().to_vec())).is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(chain(&e)));
                    return;
                }
            }
        }
    });
    let result = std::sync::Arc::new(std::sync::Mutex::new(None::<std::result::Result<(String, u64), String>>));
    let reader = HashingReader::new(rx, result.clone());
    let added = session.add_stream(STREAM, reader).await.map(|s| s.size);
    pump.abort();
    let verdict = result.lock().map_err(|_| Error::Other("hash state poisoned".into()))?.take();
    let size = added?;
    let (sha, bytes) = match verdict {
        Some(Ok(v)) => v,
        Some(Err(e)) => return Err(src_err(e)),
        None => return Err(src_err("the snapshot stream ended early")),
    };
    let info = SnapshotInfo {
        endpoint: opts.endpoints.first().cloned().unwrap_or_default(),
        version: status.version().to_string(),
        revision,
        db_size: status.db_size(),
        keys,
        member_id,
        sha256: sha,
        snapshot_bytes: bytes.max(size),
    };
    info!(bytes = info.snapshot_bytes, sha256 = %info.sha256, "snapshot verified");
    serde_json::to_value(&info).map_err(|e| Error::Other(e.to_string()))
}

type Verdict = std::sync::Arc<std::sync::Mutex<Option<std::result::Result<(String, u64), String>>>>;

/// Reads snapshot messages; at the end checks the trailing SHA-256 and fails the read on mismatch.
struct HashingReader {
    rx: std::sync::mpsc::Receiver<std::result::Result<Vec<u8>, String>>,
    buf: Vec<u8>,
    pos: usize,
    hasher: Sha256,
    /// The last 32 bytes seen (not yet hashed: they may be the checksum).
    tail: Vec<u8>,
    total: u64,
    done: bool,
    verdict: Verdict,
}

impl HashingReader {
    fn new(rx: std::sync::mpsc::Receiver<std::result::Result<Vec<u8>, String>>, verdict: Verdict) -> Self {
        HashingReader {
            rx,
            buf: Vec::new(),
            pos: 0,
            hasher: Sha256::new(),
            tail: Vec::new(),
            total: 0,
            done: false,
            verdict,
        }
    }

    fn observe(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        self.tail.extend_from_slice(data);
        if self.tail.len() > 32 {
            let cut = self.tail.len() - 32;
            self.hasher.update(&self.tail[..cut]);
            self.tail.drain(..cut);
        }
    }

    fn finish(&mut self) -> std::io::Result<()> {
        let digest: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        let r = if self.tail.len() == 32 && self.tail[..] == digest[..] {
            Ok((hex::encode(digest), self.total))
        } else {
            Err(format!(
                "the snapshot's integrity hash does not match its data ({} bytes received); the snapshot was not stored",
                self.total
            ))
        };
        let failed = r.is_err();
        let msg = r.as_ref().err().cloned();
        if let Ok(mut v) = self.verdict.lock() {
            *v = Some(r);
        }
        if failed {
            return Err(std::io::Error::other(msg.unwrap_or_default()));
        }
        Ok(())
    }
}

impl Read for HashingReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.pos < self.buf.len() {
                let n = out.len().min(self.buf.len() - self.pos);
                out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(data)) => {
                    self.observe(&data);
                    self.buf = data;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    let msg = format!("the snapshot stream failed: {e}");
                    if let Ok(mut v) = self.verdict.lock() {
                        *v = Some(Err(msg.clone()));
                    }
                    return Err(std::io::Error::other(msg));
                }
                Err(_) => {
                    self.done = true;
                    self.finish()?;
                    return Ok(0);
                }
            }
        }
    }
}

/// Check the etcd integrity hash of a snapshot file (SHA-256 of everything but the last 32 bytes).
pub fn verify_snapshot_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(Error::Input)?;
    let len = f.metadata().map_err(Error::Input)?.len();
    if len < 32 {
        return Err(Error::Corrupt {
            what: path.display().to_string(),
            detail: "too short for an etcd snapshot".into(),
        });
    }
    let mut h = Sha256::new();
    let mut left = len - 32;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = f.read(&mut buf[..(left.min(1 << 20)) as usize]).map_err(Error::Input)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    let mut tail = [0u8; 32];
    f.read_exact(&mut tail).map_err(Error::Input)?;
    let d: [u8; 32] = h.finalize().into();
    if d != tail {
        return Err(Error::Corrupt {
            what: path.display().to_string(),
            detail: "the etcd integrity hash does not match the data".into(),
        });
    }
    Ok(hex::encode(d))
}

/// Which tool turns a snapshot into a data directory: `etcdutl` (etcd ≥ 3.5), else `etcdctl` (3.4).
fn restore_tool() -> Result<(String, bool)> {
    let found = |exe: &str| {
        Command::new(exe).arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
    };
    if found("etcdutl") {
        Ok(("etcdutl".into(), false))
    } else if found("etcdctl") {
        Ok(("etcdctl".into(), true))
    } else {
        Err(Error::Other(
            "restoring an etcd snapshot needs etcdutl (etcd ≥ 3.5) or etcdctl (Debian: etcd-client) on PATH".into(),
        ))
    }
}

/// Where and as whom the restored member starts.
#[derive(Debug, Clone)]
pub struct DataDirOptions {
    pub name: String,
    pub initial_cluster: String,
    pub initial_advertise_peer_urls: String,
}

impl Default for DataDirOptions {
    fn default() -> Self {
        DataDirOptions {
            name: "default".into(),
            initial_cluster: "default=http://localhost:2380".into(),
            initial_advertise_peer_urls: "http://localhost:2380".into(),
        }
    }
}

/// Restore an etcd snapshot into a new data directory `dir` (absent or empty).
/// Returns `{data_dir, revision, sha256, tool, next}`.
pub async fn restore_to_dir(
    repo: &Repository,
    keys: &Keys,
    index: &Index,
    manifest: &Manifest,
    dir: &Path,
    opts: &DataDirOptions,
) -> Result<Value> {
    let stream = manifest.streams.iter().find(|s| s.name == STREAM).ok_or_else(|| Error::Corrupt {
        what: format!("snapshot {}", manifest.short_id()),
        detail: format!("it has no {STREAM} stream; is it an etcd snapshot?"),
    })?;
    if dir.exists() {
        let empty = std::fs::read_dir(dir).map_err(Error::Output)?.next().is_none();
        if !empty {
            return Err(Error::Other(format!(
                "{} is not empty; etcd restores into a new data directory",
                dir.display()
            )));
        }
        std::fs::remove_dir(dir).map_err(Error::Output)?;
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(Error::Output)?;
    let staging = Staging(parent.join(format!(".lifeboat-etcd-{}-{}", std::process::id(), manifest.short_id())));
    std::fs::create_dir_all(&staging.0).map_err(Error::Output)?;
    let file = staging.0.join("snapshot.db");
    let f = std::fs::File::create(&file).map_err(Error::Output)?;
    restore_stream(repo, keys, index, &manifest.id, stream, f).await?;
    let sha = verify_snapshot_file(&file)?;
    let (tool, api3) = restore_tool()?;
    let mut cmd = Command::new(&tool);
    if api3 {
        cmd.env("ETCDCTL_API", "3");
    }
    cmd.arg("snapshot")
        .arg("restore")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir)
        .arg(format!("--name={}", opts.name))
        .arg(format!("--initial-cluster={}", opts.initial_cluster))
        .arg(format!("--initial-advertise-peer-urls={}", opts.initial_advertise_peer_urls))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    debug!(?cmd, "restoring the data directory");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| Error::Other(e.to_string()))?
        .map_err(|e| Error::Other(format!("cannot run {tool}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Other(format!(
            "{tool} snapshot restore failed{}",
            crate::source::tail(&String::from_utf8_lossy(&out.stderr))
        )));
    }
    let recorded = manifest.source.get("sha256").and_then(Value::as_str);
    if let Some(r) = recorded
        && r != sha
    {
        warn!("the snapshot's hash {sha} differs from the one recorded at backup ({r})");
    }
    Ok(serde_json::json!({
        "data_dir": dir.display().to_string(),
        "revision": manifest.source.get("revision"),
        "sha256": sha,
        "tool": tool,
        "member": opts.name,
        "next": format!("start etcd with --data-dir {} --name {} (the restored member)", dir.display(), opts.name),
    }))
}

/// A staging directory removed on drop.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a throwaway etcd found in a data directory.
#[derive(Debug, Clone, Serialize)]
pub struct DataDirCheck {
    pub keys: i64,
    pub revision: i64,
    pub version: String,
}

/// A running throwaway etcd; killed on drop.
pub struct TempEtcd {
    child: std::process::Child,
    pub endpoint: String,
}

impl Drop for TempEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl TempEtcd {
    /// Start `etcd` from `data_dir` on free 127.0.0.1 ports, member name `name`;
    /// its log goes to `data_dir/../<dirname>.log`. Waits until it answers.
    pub async fn start(data_dir: &Path, name: &str) -> Result<TempEtcd> {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let endpoint = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log_path = data_dir.with_extension("log");
        let log = std::fs::File::create(&log_path).map_err(Error::Output)?;
        let log2 = log.try_clone().map_err(Error::Output)?;
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(data_dir)
            .arg(format!("--name={name}"))
            .arg(format!("--listen-client-urls={endpoint}"))
            .arg(format!("--advertise-client-urls={endpoint}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| Error::Other(format!("cannot start etcd (Debian: etcd-server): {e}")))?;
        let mut t = TempEtcd { child, endpoint };
        let deadline = Instant::now() + Duration::from_secs(60);
        let opts = EtcdOptions { endpoints: vec![t.endpoint.clone()], ..Default::default() };
        loop {
            if let Ok(Some(st)) = t.child.try_wait() {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(Error::Other(format!(
                    "etcd on {} exited with {st}{}",
                    data_dir.display(),
                    crate::source::tail(&text)
                )));
            }
            if connect(&opts).await.is_ok() {
                return Ok(t);
            }
            if Instant::now() > deadline {
                let _ = t.child.kill();
                return Err(Error::Other(format!("etcd on {} did not answer within 60s", data_dir.display())));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Start a temporary etcd from `data_dir` (free 127.0.0.1 ports), count its
/// keys, read its revision, and stop it. Starting a member writes to its
/// data directory: give a copy if the directory must stay pristine.
pub async fn check_data_dir(data_dir: &Path, name: &str) -> Result<DataDirCheck> {
    let etcd = TempEtcd::start(data_dir, name).await?;
    let mut c = connect(&EtcdOptions { endpoints: vec![etcd.endpoint.clone()], ..Default::default() }).await?;
    let status = c.status().await.map_err(|e| Error::Other(format!("status: {}", chain(&e))))?;
    let r = c
        .get(vec![0u8], Some(GetOptions::new().with_all_keys().with_count_only()))
        .await
        .map_err(|e| Error::Other(format!("counting keys: {}", chain(&e))))?;
    let check = DataDirCheck {
        keys: r.count(),
        revision: r.header().map(|h| h.revision()).unwrap_or_default(),
        version: status.version().to_string(),
    };
    drop(etcd);
    Ok(check)
}
