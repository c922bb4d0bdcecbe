//! Redis: RDB snapshots taken the way a replica receives them, logical
//! dumps (SCAN + pipelined DUMP/PTTL) for servers that refuse replication,
//! Redis Cluster (one stream per master), and restores of both.
//!
//! Everything that talks to Redis runs on blocking threads: the pipeline
//! reads a stream with `Read`, and restores write into a `Write`, so the
//! synchronous client is the natural fit (and pipelining keeps it fast).
//!
//! * **RDB mode** speaks the replication handshake itself (`AUTH`,
//!   `REPLCONF listening-port/capa/rdb-only`, `PSYNC ? -1`) and hands the
//!   pipeline a reader that yields exactly the RDB payload, in either the
//!   `$<len>` or the diskless `$EOF:<mark>` framing, checking the RDB's own
//!   CRC-64 on the way. Nothing touches the server's disk when the server
//!   uses diskless replication (the default since Redis 7.0).
//! * **Logical mode** writes a stream of records `(db, key, absolute expiry,
//!   DUMP payload)` with a trailer counting them, so a truncated stream is
//!   detected on restore; restore replays them with pipelined
//!   `RESTORE … REPLACE ABSTTL`.
//! * Restoring an **RDB snapshot into a live server** loads the file into a
//!   private, temporary `redis-server` (unix socket only, no TCP port) and
//!   copies every key from it the same way.
//!
//! Passwords never appear in messages: targets display as
//! `redis://user@host:port`.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Value};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::pipeline::{BackupSession, restore_stream};
use crate::repo::{Index, Keys, Manifest, Repository, StreamManifest};

/// Keys per SCAN call and per DUMP/RESTORE pipeline.
const BATCH: usize = 1000;
/// Flush a RESTORE pipeline once its payloads reach this size.
const BATCH_BYTES: usize = 16 << 20;
/// How long a read may block. A master preparing an RDB sends a newline
/// every second, so this only fires on a server that went silent.
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// SCAN may return a key twice; remember up to this many key hashes per db
/// (about 20 bytes each) to drop the repeats.
const DEDUP_LIMIT: usize = 20_000_000;
/// Magic at the start of a logical stream, then records, then a trailer.
const LOGICAL_MAGIC: &[u8; 8] = b"LBREDIS1";
const TAG_KEY: u8 = b'K';
const TAG_END: u8 = b'E';

fn src_err(detail: impl Into<String>) -> Error {
    Error::Source { source_name: "redis".into(), detail: detail.into() }
}

// ---------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------

/// A parsed Redis URL (`redis://[user][:password]@host:port[/db]`,
/// `rediss://…` for TLS, `unix:///path/redis.sock?pass=…`).
/// `Display` never shows the password.
#[derive(Clone)]
pub struct RedisTarget {
    info: ConnectionInfo,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisTarget({self})")
    }
}

impl std::fmt::Display for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = self.info.redis_settings().username().map(|u| format!("{u}@")).unwrap_or_default();
        match self.info.addr() {
            ConnectionAddr::Tcp(h, p) => write!(f, "redis://{user}{h}:{p}"),
            ConnectionAddr::TcpTls { host, port, .. } => write!(f, "rediss://{user}{host}:{port}"),
            ConnectionAddr::Unix(p) => write!(f, "unix://{}", p.display()),
            _ => write!(f, "redis://{user}(unknown address)"),
        }
    }
}

/// Strip the password from a Redis URL for display.
pub fn redact(url: &str) -> String {
    crate::source::postgres::redact(url)
}

impl RedisTarget {
    pub fn parse(url: &str) -> Result<RedisTarget> {
        if !["redis://", "rediss://", "unix://", "redis+unix://"].iter().any(|p| url.starts_with(p)) {
            return Err(Error::Other(format!(
                "{} is not a Redis URL; use redis://[user:password@]host:port, rediss://… (TLS) or unix:///path/redis.sock",
                redact(url)
            )));
        }
        let info =
            url.into_connection_info().map_err(|e| Error::Other(format!("invalid Redis URL {}: {e}", redact(url))))?;
        Ok(RedisTarget { info })
    }

    /// `host:port` (or the socket path) for messages.
    pub fn address(&self) -> String {
        match self.info.addr() {
            ConnectionAddr::Tcp(h, p) => format!("{h}:{p}"),
            ConnectionAddr::TcpTls { host, port, .. } => format!("{host}:{port}"),
            ConnectionAddr::Unix(p) => p.display().to_string(),
            _ => "(unknown address)".into(),
        }
    }

    fn user(&self) -> Option<&str> {
        self.info.redis_settings().username().filter(|u| !u.is_empty())
    }
    fn password(&self) -> Option<&str> {
        self.info.redis_settings().password().filter(|p| !p.is_empty())
    }

    /// The same credentials and TLS settings, another node.
    fn at(&self, host: &str, port: u16) -> RedisTarget {
        let addr = match self.info.addr() {
            ConnectionAddr::TcpTls { insecure, tls_params, .. } => ConnectionAddr::TcpTls {
                host: host.to_string(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_string(), port),
        };
        RedisTarget { info: self.info.clone().set_addr(addr) }
    }

    fn with_db0(&self) -> RedisTarget {
        let rs = self.info.redis_settings().clone().set_db(0);
        RedisTarget { info: self.info.clone().set_redis_settings(rs) }
    }

    pub fn connect(&self) -> Result<redis::Connection> {
        install_crypto_provider();
        let client = redis::Client::open(self.info.clone()).map_err(|e| self.error(e))?;
        let con = client.get_connection_with_timeout(CONNECT_TIMEOUT).map_err(|e| self.error(e))?;
        let _ = con.set_read_timeout(Some(READ_TIMEOUT));
        let _ = con.set_write_timeout(Some(READ_TIMEOUT));
        Ok(con)
    }

    /// A message for a failed command or connection that says what to do.
    fn error(&self, e: redis::RedisError) -> Error {
        src_err(self.describe(&e.to_string()))
    }

    fn describe(&self, msg: &str) -> String {
        let at = self.address();
        let user = self.user().unwrap_or("default");
        if msg.contains("WRONGPASS")
            || msg.contains("invalid password")
            || msg.contains("invalid username-password")
            || msg.contains("Password authentication failed")
        {
            format!("Redis at {at} rejected the password for user {user:?}; check the secret the url points to")
        } else if msg.contains("NOAUTH") {
            format!(
                "Redis at {at} requires a password; put it in the url (redis://:PASSWORD@host:port or redis://USER:PASSWORD@host:port)"
            )
        } else if msg.contains("without any password configured") {
            format!(
                "Redis at {at} has no password set but the url gives one; remove it from the url or set requirepass"
            )
        } else if msg.contains("NOPERM") {
            format!("Redis at {at}: user {user:?} lacks a permission: {msg}")
        } else if msg.contains("refused")
            || msg.contains("timed out")
            || msg.contains("No such file")
            || msg.contains("resolve")
        {
            format!("cannot reach Redis at {at}: {msg}")
        } else {
            format!("Redis at {at}: {msg}")
        }
    }
}

/// rustls needs a process-wide provider when several are compiled in.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn query<T: redis::FromRedisValue>(t: &RedisTarget, con: &mut redis::Connection, cmd: &redis::Cmd) -> Result<T> {
    cmd.query(con).map_err(|e| t.error(e))
}

// ---------------------------------------------------------------------------
// Server facts
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Default, Serialize)]
pub struct DbKeys {
    pub keys: u64,
    pub expires: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ServerInfo {
    pub version: String,
    pub used_memory: u64,
    pub cluster: bool,
    pub role: String,
    pub master_repl_offset: Option<i64>,
    /// INFO keyspace: db number → counts.
    pub keyspace: BTreeMap<u32, DbKeys>,
}

impl ServerInfo {
    pub fn total_keys(&self) -> u64 {
        self.keyspace.values().map(|d| d.keys).sum()
    }
    fn keyspace_json(&self) -> serde_json::Value {
        serde_json::json!(self.keyspace.iter().map(|(db, k)| (format!("db{db}"), k)).collect::<BTreeMap<_, _>>())
    }
}

fn parse_info(text: &str) -> ServerInfo {
    let mut s = ServerInfo::default();
    for line in text.lines() {
        let Some((k, v)) = line.trim().split_once(':') else { continue };
        match k {
            "redis_version" => s.version = v.to_string(),
            "used_memory" => s.used_memory = v.parse().unwrap_or(0),
            "cluster_enabled" => s.cluster = v == "1",
            "role" => s.role = v.to_string(),
            "master_repl_offset" => s.master_repl_offset = v.parse().ok(),
            _ => {
                if let Some(db) = k.strip_prefix("db").and_then(|n| n.parse::<u32>().ok()) {
                    let mut d = DbKeys::default();
                    for kv in v.split(',') {
                        match kv.split_once('=') {
                            Some(("keys", n)) => d.keys = n.parse().unwrap_or(0),
                            Some(("expires", n)) => d.expires = n.parse().unwrap_or(0),
                            _ => {}
                        }
                    }
                    s.keyspace.insert(db, d);
                }
            }
        }
    }
    s
}

pub fn server_info(t: &RedisTarget, con: &mut redis::Connection) -> Result<ServerInfo> {
    let text: String = query(t, con, redis::cmd("INFO").arg("all"))?;
    Ok(parse_info(&text))
}

/// One master of a cluster (or the standalone server).
#[derive(Debug, Clone, Serialize)]
pub struct Shard {
    pub node_id: String,
    pub host: String,
    pub port: u16,
    pub slots: Vec<(u16, u16)>,
}

/// The masters of a cluster, from CLUSTER NODES (works on every version).
fn cluster_masters(t: &RedisTarget, con: &mut redis::Connection) -> Result<Vec<Shard>> {
    let text: String = query(t, con, &redis::cmd("CLUSTER").arg("NODES").clone())?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        let flags: Vec<&str> = f[2].split(',').collect();
        if !flags.contains(&"master") || flags.contains(&"fail") || flags.contains(&"noaddr") {
            continue;
        }
        // ip:port@cport[,hostname]
        let addr = f[1].split(',').next().unwrap_or("").split('@').next().unwrap_or("");
        let (host, port) = addr.rsplit_once(':').unwrap_or(("", ""));
        let port: u16 =
            port.parse().map_err(|_| src_err(format!("cannot read a node address from CLUSTER NODES: {line:?}")))?;
        let host = if host.is_empty() {
            t.address().rsplit_once(':').map(|(h, _)| h.to_string()).unwrap_or_default()
        } else {
            host.to_string()
        };
        let mut slots = Vec::new();
        for s in &f[8..] {
            if s.starts_with('[') {
                continue; // a slot being migrated
            }
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            if let (Ok(a), Ok(b)) = (a.parse(), b.parse()) {
                slots.push((a, b));
            }
        }
        if slots.is_empty() {
            continue; // a master without slots holds no keys
        }
        out.push(Shard { node_id: f[0].to_string(), host, port, slots });
    }
    out.sort_by_key(|s| s.slots.first().map(|r| r.0).unwrap_or(0));
    if out.is_empty() {
        return Err(src_err(format!("the cluster at {} reports no master that serves slots", t.address())));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// RDB over the replication protocol
// ---------------------------------------------------------------------------

trait Duplex: Read + Write + Send {}
impl<T: Read + Write + Send> Duplex for T {}

fn open_socket(t: &RedisTarget) -> Result<Box<dyn Duplex>> {
    let unreachable = |e: std::io::Error| src_err(format!("cannot reach Redis at {}: {e}", t.address()));
    match t.info.addr() {
        ConnectionAddr::Unix(p) => {
            let s = std::os::unix::net::UnixStream::connect(p).map_err(unreachable)?;
            s.set_read_timeout(Some(READ_TIMEOUT)).map_err(unreachable)?;
            Ok(Box::new(s))
        }
        ConnectionAddr::Tcp(h, p) => Ok(Box::new(tcp_connect(h, *p).map_err(unreachable)?)),
        ConnectionAddr::TcpTls { host, port, insecure, .. } => {
            if *insecure {
                return Err(src_err(
                    "RDB mode does not support rediss:// with #insecure; use a verifiable certificate or mode = \"logical\"",
                ));
            }
            let tcp = tcp_connect(host, *port).map_err(unreachable)?;
            let cfg = crate::crypto::tls_client_config()?;
            let name = rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(|e| src_err(format!("invalid TLS server name {host:?}: {e}")))?;
            let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| src_err(format!("TLS: {e}")))?;
            Ok(Box::new(rustls::StreamOwned::new(conn, tcp)))
        }
        _ => Err(src_err(format!("RDB mode cannot connect to {t}; use mode = \"logical\""))),
    }
}

fn tcp_connect(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let mut last = None;
    for a in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_read_timeout(Some(READ_TIMEOUT))?;
                s.set_write_timeout(Some(READ_TIMEOUT))?;
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))
}

fn resp_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Read one line (without CRLF). Lone newlines (the master's keepalives
/// while it prepares the RDB) are skipped when `skip_empty`.
fn read_line(r: &mut BufReader<Box<dyn Duplex>>, skip_empty: bool) -> std::io::Result<String> {
    loop {
        let mut buf = Vec::new();
        let n = r.read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the server closed the connection"));
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        if buf.is_empty() && skip_empty {
            continue;
        }
        return Ok(String::from_utf8_lossy(&buf).to_string());
    }
}

/// What the replication handshake told us, and what the transfer saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RdbTransfer {
    pub replid: String,
    pub offset: i64,
    /// The master streamed the RDB straight from memory (`$EOF:` framing).
    pub diskless: bool,
    pub rdb_version: Option<u32>,
    pub bytes: u64,
    /// The RDB carried a CRC-64 and it matched.
    pub checksum_verified: bool,
    /// Set once the whole payload has been read and checked.
    pub complete: bool,
}

/// Yields exactly the RDB payload of a full resync, checking its framing
/// and CRC-64; any early end is an error that names the byte count.
pub struct RdbReader {
    inner: BufReader<Box<dyn Duplex>>,
    framing: Framing,
    /// Bytes ready to hand out.
    pending: Vec<u8>,
    pos: usize,
    /// EOF framing: up to 39 trailing bytes that could begin the end mark.
    held: Vec<u8>,
    /// Bytes read off the socket (length framing).
    received: u64,
    /// The socket side is complete; `finish` runs once `pending` drains.
    end_reached: bool,
    finished: bool,
    crc: Crc64,
    /// The last (up to) 8 bytes handed out: the checksum once the payload ends.
    tail: Vec<u8>,
    seen: u64,
    header: Vec<u8>,
    state: Arc<Mutex<RdbTransfer>>,
    address: String,
}

enum Framing {
    Length(u64),
    Mark(Vec<u8>),
}

impl RdbReader {
    fn new(
        inner: BufReader<Box<dyn Duplex>>,
        framing: Framing,
        state: Arc<Mutex<RdbTransfer>>,
        address: String,
    ) -> RdbReader {
        RdbReader {
            inner,
            framing,
            pending: Vec::new(),
            pos: 0,
            held: Vec::new(),
            received: 0,
            end_reached: false,
            finished: false,
            crc: Crc64::new(),
            tail: Vec::with_capacity(16),
            seen: 0,
            header: Vec::with_capacity(9),
            state,
            address,
        }
    }

    fn expected(&self) -> String {
        match self.framing {
            Framing::Length(n) => format!(" of {n}"),
            Framing::Mark(_) => String::new(),
        }
    }

    /// Account for bytes handed out: checksum (all but the final 8), tail, header.
    fn account(&mut self, data: &[u8]) {
        if self.header.len() < 9 {
            let need = 9 - self.header.len();
            self.header.extend_from_slice(&data[..need.min(data.len())]);
        }
        self.seen += data.len() as u64;
        if data.len() >= 8 {
            self.crc.update(&self.tail);
            self.crc.update(&data[..data.len() - 8]);
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - 8..]);
        } else {
            self.tail.extend_from_slice(data);
            if self.tail.len() > 8 {
                let extra = self.tail.len() - 8;
                let out: Vec<u8> = self.tail.drain(..extra).collect();
                self.crc.update(&out);
            }
        }
    }

    fn finish(&mut self) -> std::io::Result<()> {
        self.finished = true;
        if self.seen < 18 || &self.header[..5] != b"REDIS" {
            return Err(std::io::Error::other(format!(
                "the server at {} sent {} bytes that are not an RDB file",
                self.address, self.seen
            )));
        }
        let version = std::str::from_utf8(&self.header[5..9]).ok().and_then(|v| v.parse::<u32>().ok());
        // The RDB ends with the EOF opcode (0xFF) and a little-endian CRC-64
        // over everything before the checksum (0 when rdbchecksum is off).
        let mut t = [0u8; 8];
        t.copy_from_slice(&self.tail);
        let stored = u64::from_le_bytes(t);
        let verified = stored != 0;
        if verified && stored != self.crc.value() {
            return Err(std::io::Error::other(format!(
                "the RDB from {} failed its CRC-64 check ({} bytes received); the transfer was corrupted",
                self.address, self.seen
            )));
        }
        let mut st = self.state.lock().map_err(|_| std::io::Error::other("state poisoned"))?;
        st.rdb_version = version;
        st.bytes = self.seen;
        st.checksum_verified = verified;
        st.complete = true;
        Ok(())
    }

    fn dropped(&self, e: std::io::Error) -> std::io::Error {
        let what = match e.kind() {
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "went silent".to_string(),
            std::io::ErrorKind::UnexpectedEof => "was closed by the server".to_string(),
            _ => format!("dropped ({e})"),
        };
        let got = self.received.max(self.seen + self.pending.len() as u64 - self.pos as u64);
        std::io::Error::other(format!(
            "the connection to Redis at {} {what} after {got}{} bytes of the RDB; retry, and if it recurs check the server's log \
             for a replica disconnect (repl-timeout, client-output-buffer-limit replica, or a restart)",
            self.address,
            self.expected()
        ))
    }

    /// Read more from the socket into `pending`.
    fn refill(&mut self) -> std::io::Result<()> {
        let mut chunk = vec![0u8; 256 * 1024];
        let want = match self.framing {
            Framing::Length(total) => {
                let left = total - self.received;
                if left == 0 {
                    self.end_reached = true;
                    return Ok(());
                }
                left.min(chunk.len() as u64) as usize
            }
            Framing::Mark(_) => chunk.len(),
        };
        let n = loop {
            match self.inner.read(&mut chunk[..want]) {
                Ok(0) => return Err(self.dropped(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "eof"))),
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.dropped(e)),
            }
        };
        chunk.truncate(n);
        self.received += n as u64;
        self.pos = 0;
        match &self.framing {
            Framing::Length(total) => {
                if self.received == *total {
                    self.end_reached = true;
                }
                self.pending = chunk;
            }
            Framing::Mark(mark) => {
                let mut carry = std::mem::take(&mut self.held);
                carry.extend_from_slice(&chunk);
                if let Some(i) = find(&carry, mark) {
                    carry.truncate(i);
                    self.end_reached = true;
                } else {
                    let keep = (mark.len() - 1).min(carry.len());
                    self.held = carry.split_off(carry.len() - keep);
                }
                self.pending = carry;
            }
        }
        Ok(())
    }
}

impl Read for RdbReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos < self.pending.len() {
                let n = (self.pending.len() - self.pos).min(buf.len());
                buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
                self.pos += n;
                self.account(&buf[..n]);
                return Ok(n);
            }
            if self.finished {
                return Ok(0);
            }
            if self.end_reached {
                self.finish()?;
                return Ok(0);
            }
            self.refill()?;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// CRC-64/Jones as Redis computes it (reflected, init 0), slicing by 8.
struct Crc64 {
    crc: u64,
}

static CRC_TABLES: std::sync::LazyLock<Box<[[u64; 256]; 8]>> = std::sync::LazyLock::new(|| {
    const POLY: u64 = 0x95ac_9329_ac4b_c9b5; // 0xad93d23594c935a9 reflected
    let mut t = Box::new([[0u64; 256]; 8]);
    for i in 0..256 {
        let mut c = i as u64;
        for _ in 0..8 {
            c = if c & 1 == 1 { (c >> 1) ^ POLY } else { c >> 1 };
        }
        t[0][i] = c;
    }
    for k in 1..8 {
        for i in 0..256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
        }
    }
    t
});

impl Crc64 {
    fn new() -> Crc64 {
        Crc64 { crc: 0 }
    }
    fn update(&mut self, data: &[u8]) {
        let t = &**CRC_TABLES;
        let mut crc = self.crc;
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            crc ^= u64::from_le_bytes(c.try_into().expect("8 bytes"));
            crc = t[7][(crc & 0xff) as usize]
                ^ t[6][((crc >> 8) & 0xff) as usize]
                ^ t[5][((crc >> 16) & 0xff) as usize]
                ^ t[4][((crc >> 24) & 0xff) as usize]
                ^ t[3][((crc >> 32) & 0xff) as usize]
                ^ t[2][((crc >> 40) & 0xff) as usize]
                ^ t[1][((crc >> 48) & 0xff) as usize]
                ^ t[0][(crc >> 56) as usize];
        }
        for &b in chunks.remainder() {
            crc = t[0][((crc ^ b as u64) & 0xff) as usize] ^ (crc >> 8);
        }
        self.crc = crc;
    }
    fn value(&self) -> u64 {
        self.crc
    }
}

/// Refusals of the replication commands: say what to do instead.
fn replication_refused(t: &RedisTarget, command: &str, reply: &str) -> Error {
    let reply = reply.trim_start_matches('-');
    if reply.starts_with("WRONGPASS") || reply.starts_with("NOAUTH") {
        return src_err(t.describe(reply));
    }
    if reply.starts_with("NOMASTERLINK") || reply.contains("not connected with my master") {
        return src_err(format!(
            "Redis at {} is a replica that lost its master and cannot serve a full sync ({reply}); back up the master, or use mode = \"logical\"",
            t.address()
        ));
    }
    src_err(format!(
        "Redis at {} refused replication ({command}: {reply}). RDB mode needs the SYNC/PSYNC/REPLCONF commands, which managed Redis services, \
         ACL rules and rename-command disable; set mode = \"logical\" for this job (SCAN + DUMP, no replication needed), or grant the user +psync +replconf",
        t.address()
    ))
}

/// Connect as a replica and ask for a full resync. Returns a reader of the
/// RDB payload and the shared transfer record it fills in.
pub fn open_rdb(t: &RedisTarget) -> Result<(RdbReader, Arc<Mutex<RdbTransfer>>)> {
    let sock = open_socket(t)?;
    let mut r = BufReader::with_capacity(256 * 1024, sock);
    let io = |e: std::io::Error| src_err(format!("Redis at {} during the replication handshake: {e}", t.address()));
    let send = |r: &mut BufReader<Box<dyn Duplex>>, args: &[&[u8]]| -> Result<String> {
        r.get_mut().write_all(&resp_command(args)).map_err(io)?;
        r.get_mut().flush().map_err(io)?;
        read_line(r, true).map_err(io)
    };
    if let Some(pw) = t.password() {
        let reply = match t.user() {
            Some(u) => send(&mut r, &[b"AUTH", u.as_bytes(), pw.as_bytes()])?,
            None => send(&mut r, &[b"AUTH", pw.as_bytes()])?,
        };
        if reply.starts_with('-') {
            return Err(src_err(t.describe(&reply)));
        }
    }
    let reply = send(&mut r, &[b"REPLCONF", b"listening-port", b"0"])?;
    if reply.starts_with('-') {
        return Err(replication_refused(t, "REPLCONF", &reply));
    }
    // capa eof: we accept the diskless framing, so a master with
    // repl-diskless-sync (the default since 7.0) never writes to its disk.
    let reply = send(&mut r, &[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"])?;
    if reply.starts_with('-') {
        return Err(replication_refused(t, "REPLCONF", &reply));
    }
    // rdb-only (7.0+): the master sends the RDB and no command stream, and
    // keeps no replication buffer for us. Older servers refuse; that is fine.
    let reply = send(&mut r, &[b"REPLCONF", b"rdb-only", b"1"])?;
    if reply.starts_with('-') {
        debug!(reply, "server does not know REPLCONF rdb-only");
    }
    let reply = send(&mut r, &[b"PSYNC", b"?", b"-1"])?;
    if reply.starts_with('-') {
        return Err(replication_refused(t, "PSYNC", &reply));
    }
    let Some(rest) = reply.strip_prefix("+FULLRESYNC ") else {
        return Err(src_err(format!("Redis at {} answered PSYNC with {reply:?}, not +FULLRESYNC", t.address())));
    };
    let mut parts = rest.split_whitespace();
    let replid = parts.next().unwrap_or_default().to_string();
    let offset = parts.next().and_then(|o| o.parse().ok()).unwrap_or(-1);
    // The payload header: `$<len>` after a disk-based save, `$EOF:<40-byte mark>` when diskless.
    let header = read_line(&mut r, true).map_err(|e| {
        src_err(format!(
            "the connection to Redis at {} closed before the RDB transfer started ({e}); no snapshot was written",
            t.address()
        ))
    })?;
    let state = Arc::new(Mutex::new(RdbTransfer { replid, offset, ..Default::default() }));
    let framing = if let Some(mark) = header.strip_prefix("$EOF:") {
        if mark.len() != 40 {
            return Err(src_err(format!("Redis at {} sent a malformed diskless header {header:?}", t.address())));
        }
        state.lock().map_err(|_| Error::Other("poisoned".into()))?.diskless = true;
        Framing::Mark(mark.as_bytes().to_vec())
    } else if let Some(n) = header.strip_prefix('$').and_then(|n| n.parse::<u64>().ok()) {
        warn!(
            server = %t.address(),
            "the server wrote the RDB to its own disk before sending it (repl-diskless-sync is off); set repl-diskless-sync yes to avoid that"
        );
        Framing::Length(n)
    } else if header.starts_with('-') {
        return Err(replication_refused(t, "PSYNC", &header));
    } else {
        return Err(src_err(format!("Redis at {} sent {header:?} where the RDB should start", t.address())));
    };
    info!(server = %t.address(), diskless = matches!(framing, Framing::Mark(_)), "RDB transfer started");
    Ok((RdbReader::new(r, framing, state.clone(), t.address()), state))
}

// ---------------------------------------------------------------------------
// Logical records
// ---------------------------------------------------------------------------

/// One key as DUMP sees it.
#[derive(Debug, Clone)]
pub struct Record {
    pub db: u32,
    pub key: Vec<u8>,
    /// Absolute expiry in Unix milliseconds (server clock), if any.
    pub expire_at_ms: Option<i64>,
    /// DUMP payload: RDB-serialised value, RDB version, CRC-64.
    pub payload: Vec<u8>,
}

/// The Redis type of a DUMP payload, from its leading RDB type byte.
pub fn payload_type(payload: &[u8]) -> &'static str {
    match payload.first() {
        Some(0) => "string",
        Some(1 | 10 | 14 | 18) => "list",
        Some(2 | 11 | 20) => "set",
        Some(3 | 5 | 12 | 17) => "zset",
        Some(4 | 9 | 13 | 16 | 22..=25) => "hash",
        Some(6 | 7) => "module",
        Some(15 | 19 | 21) => "stream",
        _ => "unknown",
    }
}

fn write_record<W: Write>(w: &mut W, r: &Record) -> std::io::Result<()> {
    w.write_all(&[TAG_KEY])?;
    w.write_all(&r.db.to_le_bytes())?;
    w.write_all(&(r.key.len() as u32).to_le_bytes())?;
    w.write_all(&r.key)?;
    w.write_all(&r.expire_at_ms.unwrap_or(-1).to_le_bytes())?;
    w.write_all(&(r.payload.len() as u64).to_le_bytes())?;
    w.write_all(&r.payload)
}

/// Reads a logical stream; the trailer's count must match the records read.
pub struct RecordReader<R: Read> {
    r: R,
    count: u64,
    done: bool,
}

impl<R: Read> RecordReader<R> {
    pub fn new(mut r: R) -> Result<RecordReader<R>> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(|e| corrupt(format!("cannot read the stream header: {e}")))?;
        if &magic != LOGICAL_MAGIC {
            return Err(corrupt("this stream is not a lifeboat logical Redis dump".into()));
        }
        Ok(RecordReader { r, count: 0, done: false })
    }

    pub fn next_record(&mut self) -> Result<Option<Record>> {
        if self.done {
            return Ok(None);
        }
        let trunc = |e: std::io::Error, n: u64| corrupt(format!("the stream ends inside record {} ({e})", n + 1));
        let mut tag = [0u8; 1];
        self.r.read_exact(&mut tag).map_err(|e| trunc(e, self.count))?;
        match tag[0] {
            TAG_END => {
                let mut n = [0u8; 8];
                self.r.read_exact(&mut n).map_err(|e| trunc(e, self.count))?;
                let n = u64::from_le_bytes(n);
                if n != self.count {
                    return Err(corrupt(format!("the trailer counts {n} keys but the stream holds {}", self.count)));
                }
                self.done = true;
                Ok(None)
            }
            TAG_KEY => {
                let mut b4 = [0u8; 4];
                let mut b8 = [0u8; 8];
                let c = self.count;
                self.r.read_exact(&mut b4).map_err(|e| trunc(e, c))?;
                let db = u32::from_le_bytes(b4);
                self.r.read_exact(&mut b4).map_err(|e| trunc(e, c))?;
                let mut key = vec![0u8; u32::from_le_bytes(b4) as usize];
                self.r.read_exact(&mut key).map_err(|e| trunc(e, c))?;
                self.r.read_exact(&mut b8).map_err(|e| trunc(e, c))?;
                let exp = i64::from_le_bytes(b8);
                self.r.read_exact(&mut b8).map_err(|e| trunc(e, c))?;
                let len = u64::from_le_bytes(b8);
                if len > 1 << 40 {
                    return Err(corrupt(format!("record {} claims a {len}-byte value", c + 1)));
                }
                let mut payload = vec![0u8; len as usize];
                self.r.read_exact(&mut payload).map_err(|e| trunc(e, c))?;
                self.count += 1;
                Ok(Some(Record { db, key, expire_at_ms: (exp >= 0).then_some(exp), payload }))
            }
            other => Err(corrupt(format!("unknown record tag {other:#x} after {} records", self.count))),
        }
    }
}

fn corrupt(detail: String) -> Error {
    Error::Corrupt { what: "logical Redis stream".into(), detail }
}

/// What a scan saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanStats {
    pub keys: u64,
    pub keys_by_type: BTreeMap<String, u64>,
    pub keys_by_db: BTreeMap<String, u64>,
    pub with_expiry: u64,
    /// Keys SCAN returned that were gone (deleted or expired) by DUMP time.
    pub vanished: u64,
    pub payload_bytes: u64,
    /// Keys SCAN returned twice (it may, while the keyspace is resized).
    pub duplicates_dropped: u64,
}

/// SCAN every listed db, DUMP + PTTL each key in pipelines, and hand each
/// live key to `emit`. Keys that vanish between SCAN and DUMP are skipped;
/// SCAN's possible duplicates are dropped.
pub fn scan_keys(
    t: &RedisTarget,
    con: &mut redis::Connection,
    dbs: &[u32],
    emit: &mut dyn FnMut(Record) -> Result<()>,
) -> Result<ScanStats> {
    let mut st = ScanStats::default();
    for &db in dbs {
        query::<()>(t, con, redis::cmd("SELECT").arg(db))?;
        let mut seen: HashSet<[u8; 16]> = HashSet::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<Vec<u8>>) =
                query(t, con, redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(BATCH))?;
            let keys: Vec<Vec<u8>> = keys
                .into_iter()
                .filter(|k| {
                    if seen.len() >= DEDUP_LIMIT {
                        return true; // beyond the cap a duplicate only costs a repeated RESTORE … REPLACE
                    }
                    let h: [u8; 32] = Sha256::digest(k).into();
                    let new = seen.insert(h[..16].try_into().expect("16 bytes"));
                    st.duplicates_dropped += !new as u64;
                    new
                })
                .collect();
            if !keys.is_empty() {
                let mut p = redis::pipe();
                p.cmd("TIME");
                for k in &keys {
                    p.cmd("DUMP").arg(k);
                    p.cmd("PTTL").arg(k);
                }
                let replies: Vec<Value> = p.query(con).map_err(|e| t.error(e))?;
                let now_ms = match replies.first() {
                    Some(Value::Array(v)) if v.len() == 2 => {
                        let num = |x: &Value| match x {
                            Value::BulkString(b) => std::str::from_utf8(b).ok().and_then(|s| s.parse::<i64>().ok()),
                            Value::Int(i) => Some(*i),
                            _ => None,
                        };
                        num(&v[0]).unwrap_or(0) * 1000 + num(&v[1]).unwrap_or(0) / 1000
                    }
                    _ => chrono::Utc::now().timestamp_millis(),
                };
                for (i, key) in keys.into_iter().enumerate() {
                    let dump = &replies[1 + 2 * i];
                    let pttl = &replies[2 + 2 * i];
                    let payload = match dump {
                        Value::BulkString(b) => b.clone(),
                        Value::Nil => {
                            st.vanished += 1;
                            continue;
                        }
                        Value::ServerError(e) => {
                            return Err(src_err(t.describe(&format!(
                                "DUMP {}: {} {}",
                                show_key(&key),
                                e.code(),
                                e.details().unwrap_or("")
                            ))));
                        }
                        other => return Err(src_err(format!("unexpected DUMP reply {other:?} from {}", t.address()))),
                    };
                    let expire_at_ms = match pttl {
                        Value::Int(-2) => {
                            st.vanished += 1;
                            continue;
                        }
                        Value::Int(ms) if *ms >= 0 => Some(now_ms + ms),
                        _ => None,
                    };
                    st.keys += 1;
                    *st.keys_by_type.entry(payload_type(&payload).to_string()).or_default() += 1;
                    *st.keys_by_db.entry(format!("db{db}")).or_default() += 1;
                    st.with_expiry += expire_at_ms.is_some() as u64;
                    st.payload_bytes += payload.len() as u64;
                    emit(Record { db, key, expire_at_ms, payload })?;
                }
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    }
    Ok(st)
}

fn show_key(k: &[u8]) -> String {
    let s = String::from_utf8_lossy(k);
    if s.len() > 80 { format!("{:?}…", &s[..s.floor_char_boundary(80)]) } else { format!("{s:?}") }
}

// ---------------------------------------------------------------------------
// Restoring keys into a server or a cluster
// ---------------------------------------------------------------------------

enum Sink {
    Standalone { con: redis::Connection, db: Option<u32> },
    // Boxed: a cluster connection is much larger than a server's.
    Cluster { con: Box<redis::cluster::ClusterConnection> },
}

/// A live target (server or cluster) that receives records in pipelines.
pub struct Restorer {
    target: RedisTarget,
    sink: Sink,
    batch: Vec<Record>,
    batch_bytes: usize,
    pub restored: u64,
    pub by_db: BTreeMap<String, u64>,
    pub already_expired: u64,
}

/// Facts about a restore target, read before anything is written.
pub struct TargetInfo {
    pub info: ServerInfo,
    pub masters: Vec<Shard>,
    pub keys: u64,
    pub keys_detail: String,
}

pub fn inspect_target(t: &RedisTarget) -> Result<TargetInfo> {
    let mut con = t.connect()?;
    let info = server_info(t, &mut con)?;
    if info.cluster {
        let masters = cluster_masters(t, &mut con)?;
        let mut keys = 0;
        let mut parts = Vec::new();
        for m in &masters {
            let nt = t.at(&m.host, m.port);
            let mut c = nt.connect()?;
            let n: u64 = query(&nt, &mut c, &redis::cmd("DBSIZE"))?;
            keys += n;
            parts.push(format!("{n} on {}:{}", m.host, m.port));
        }
        Ok(TargetInfo { info, masters, keys, keys_detail: parts.join(", ") })
    } else {
        let keys = info.total_keys();
        let detail = info.keyspace.iter().map(|(db, k)| format!("{} in db{db}", k.keys)).collect::<Vec<_>>().join(", ");
        Ok(TargetInfo { info, masters: Vec::new(), keys, keys_detail: detail })
    }
}

impl Restorer {
    pub fn open(t: &RedisTarget, ti: &TargetInfo, flush: bool) -> Result<Restorer> {
        if ti.keys > 0 {
            if !flush {
                return Err(Error::Other(format!(
                    "the target {t} is not empty ({} keys: {}); pass --flush to delete them first (FLUSHALL), or restore into an empty server",
                    ti.keys, ti.keys_detail
                )));
            }
            if ti.info.cluster {
                for m in &ti.masters {
                    let nt = t.at(&m.host, m.port);
                    let mut c = nt.connect()?;
                    query::<()>(&nt, &mut c, &redis::cmd("FLUSHALL"))?;
                }
            } else {
                let mut c = t.connect()?;
                query::<()>(t, &mut c, &redis::cmd("FLUSHALL"))?;
            }
            warn!(target = %t, keys = ti.keys, "flushed the target before restoring");
        }
        let sink = if ti.info.cluster {
            install_crypto_provider();
            let seed = t.with_db0();
            let client = redis::cluster::ClusterClientBuilder::new(vec![seed.info.clone()])
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(READ_TIMEOUT)
                .build()
                .map_err(|e| t.error(e))?;
            Sink::Cluster { con: Box::new(client.get_connection().map_err(|e| t.error(e))?) }
        } else {
            Sink::Standalone { con: t.connect()?, db: None }
        };
        Ok(Restorer {
            target: t.clone(),
            sink,
            batch: Vec::new(),
            batch_bytes: 0,
            restored: 0,
            by_db: BTreeMap::new(),
            already_expired: 0,
        })
    }

    pub fn push(&mut self, r: Record) -> Result<()> {
        self.batch_bytes += r.payload.len() + r.key.len();
        self.batch.push(r);
        if self.batch.len() >= BATCH || self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let restore_cmd = |r: &Record| {
            let mut c = redis::cmd("RESTORE");
            c.arg(&r.key[..]);
            match r.expire_at_ms {
                Some(at) => c.arg(at).arg(&r.payload[..]).arg("REPLACE").arg("ABSTTL"),
                None => c.arg(0).arg(&r.payload[..]).arg("REPLACE"),
            };
            c
        };
        let t = self.target.clone();
        match &mut self.sink {
            Sink::Standalone { con, db } => {
                let mut p = redis::pipe();
                p.ignore_errors();
                // Which reply belongs to which record (SELECT replies are skipped).
                let mut slots = Vec::with_capacity(batch.len());
                for r in &batch {
                    if *db != Some(r.db) {
                        p.cmd("SELECT").arg(r.db);
                        slots.push(None);
                        *db = Some(r.db);
                    }
                    p.add_command(restore_cmd(r));
                    slots.push(Some(r));
                }
                let replies: Vec<Value> = p.query(con).map_err(|e| t.error(e))?;
                for (reply, slot) in replies.iter().zip(&slots) {
                    if let Value::ServerError(e) = reply {
                        let msg = format!("{} {}", e.code(), e.details().unwrap_or(""));
                        return Err(restore_error(&t, slot.map(|r| (r.db, &r.key[..])), &msg));
                    }
                }
            }
            Sink::Cluster { con } => {
                if let Some(r) = batch.iter().find(|r| r.db != 0) {
                    return Err(Error::Other(format!(
                        "the snapshot has keys in db{} but a Redis Cluster only has db0; restore it into a standalone server",
                        r.db
                    )));
                }
                let mut p = redis::cluster::cluster_pipe();
                for r in &batch {
                    p.add_command(restore_cmd(r));
                }
                let _: Vec<Value> = p.query(con).map_err(|e| restore_error(&t, None, &e.to_string()))?;
            }
        }
        for r in &batch {
            *self.by_db.entry(format!("db{}", r.db)).or_default() += 1;
            if r.expire_at_ms.is_some_and(|at| at <= chrono::Utc::now().timestamp_millis()) {
                self.already_expired += 1;
            }
        }
        self.restored += batch.len() as u64;
        Ok(())
    }
}

fn restore_error(t: &RedisTarget, key: Option<(u32, &[u8])>, msg: &str) -> Error {
    let at = key.map(|(db, k)| format!(" (key {} in db{db})", show_key(k))).unwrap_or_default();
    if msg.contains("payload version or checksum") {
        Error::Other(format!(
            "Redis at {} cannot read the snapshot's values{at}: it is older than the server that was backed up (DUMP payload version). Restore into Redis of the same or a newer version",
            t.address()
        ))
    } else if msg.contains("DB index is out of range") {
        Error::Other(format!(
            "Redis at {} has fewer databases than the snapshot uses{at}; raise `databases` in its configuration",
            t.address()
        ))
    } else {
        Error::Other(format!("restoring into {}{at}: {}", t.address(), t.describe(msg)))
    }
}

// ---------------------------------------------------------------------------
// Backup
// ---------------------------------------------------------------------------

/// Back up a Redis server or cluster. `mode` is `rdb` (default) or `logical`.
pub async fn backup(session: &mut BackupSession, job: &str, url: &str, mode: &str) -> Result<serde_json::Value> {
    let t = RedisTarget::parse(url)?;
    let t2 = t.clone();
    let (info, masters) = blocking(move || {
        let mut con = t2.connect()?;
        let info = server_info(&t2, &mut con)?;
        let masters = if info.cluster { Some(cluster_masters(&t2, &mut con)?) } else { None };
        Ok((info, masters))
    })
    .await?;
    let cluster = masters.is_some();
    // Standalone: one "shard", the server itself (whatever db the url names).
    let shards: Vec<(String, RedisTarget, Option<Shard>)> = match masters {
        Some(ms) => ms
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let ext = if mode == "logical" { "records" } else { "rdb" };
                (format!("shard-{}.{ext}", i + 1), t.at(&m.host, m.port).with_db0(), Some(m))
            })
            .collect(),
        None => vec![(if mode == "logical" { "keys.records".into() } else { "dump.rdb".into() }, t.with_db0(), None)],
    };
    info!(job, server = %t, version = %info.version, cluster, shards = shards.len(), mode, "redis backup");
    let mut shard_meta = Vec::new();
    let mut totals = ScanStats::default();
    for (stream, nt, shard) in shards {
        let node_info = if cluster {
            let nt2 = nt.clone();
            Some(
                blocking(move || {
                    let mut c = nt2.connect()?;
                    server_info(&nt2, &mut c)
                })
                .await?,
            )
        } else {
            None
        };
        let ni = node_info.as_ref().unwrap_or(&info);
        let mut m = serde_json::json!({
            "stream": stream,
            "node": nt.address(),
            "keyspace": ni.keyspace_json(),
            "used_memory": ni.used_memory,
        });
        if let Some(s) = &shard {
            m["node_id"] = serde_json::json!(s.node_id);
            m["slots"] = serde_json::json!(s.slots);
        }
        match mode {
            "logical" => {
                let dbs: Vec<u32> = ni.keyspace.keys().copied().collect();
                let st = backup_logical_stream(session, &stream, &nt, dbs).await?;
                for (k, v) in &st.keys_by_type {
                    *totals.keys_by_type.entry(k.clone()).or_default() += v;
                }
                for (k, v) in &st.keys_by_db {
                    *totals.keys_by_db.entry(k.clone()).or_default() += v;
                }
                totals.keys += st.keys;
                totals.vanished += st.vanished;
                totals.with_expiry += st.with_expiry;
                m["keys"] = serde_json::json!(st.keys);
                m["keys_by_type"] = serde_json::json!(st.keys_by_type);
                m["vanished_during_scan"] = serde_json::json!(st.vanished);
            }
            _ => {
                let tr = backup_rdb_stream(session, &stream, &nt).await?;
                m["replid"] = serde_json::json!(tr.replid);
                m["replication_offset"] = serde_json::json!(tr.offset);
                m["diskless"] = serde_json::json!(tr.diskless);
                m["rdb_version"] = serde_json::json!(tr.rdb_version);
                m["rdb_bytes"] = serde_json::json!(tr.bytes);
                m["checksum_verified"] = serde_json::json!(tr.checksum_verified);
            }
        }
        shard_meta.push(m);
    }
    let mut meta = serde_json::json!({
        "mode": if mode == "logical" { "logical" } else { "rdb" },
        "format": if mode == "logical" { "lifeboat-redis-records-v1" } else { "rdb" },
        "server_version": info.version,
        "topology": if cluster { "cluster" } else { "standalone" },
        "source": t.to_string(),
        "used_memory": info.used_memory,
        "keyspace": info.keyspace_json(),
        "keys": if cluster { serde_json::json!(null) } else { serde_json::json!(info.total_keys()) },
        "shards": shard_meta,
    });
    if !cluster && let Some(s) = meta["shards"].get(0).cloned() {
        meta["replication_offset"] = s["replication_offset"].clone();
        meta["replid"] = s["replid"].clone();
    }
    if mode == "logical" {
        meta["keys"] = serde_json::json!(totals.keys);
        meta["keys_by_type"] = serde_json::json!(totals.keys_by_type);
        meta["keys_by_db"] = serde_json::json!(totals.keys_by_db);
        meta["keys_with_expiry"] = serde_json::json!(totals.with_expiry);
        meta["vanished_during_scan"] = serde_json::json!(totals.vanished);
        meta["consistency"] =
            serde_json::json!("per key: keys are read one batch at a time while the server keeps serving writes");
    } else {
        meta["consistency"] =
            serde_json::json!(if cluster { "point in time per shard" } else { "point in time (fork of the server)" });
        meta["databases"] = serde_json::json!(info.keyspace.keys().max().map(|m| (m + 1).max(16)).unwrap_or(16));
    }
    Ok(meta)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Other(format!("redis worker failed: {e}")))?
}

/// A stream error from the pipeline's reader is the source's failure.
fn as_source(e: Error) -> Error {
    match e {
        Error::Input(io) => src_err(io.to_string()),
        other => other,
    }
}

async fn backup_rdb_stream(session: &mut BackupSession, stream: &str, t: &RedisTarget) -> Result<RdbTransfer> {
    let t2 = t.clone();
    let (reader, state) = blocking(move || open_rdb(&t2)).await?;
    let started = Instant::now();
    session.add_stream(stream, reader).await.map_err(as_source)?;
    let tr = state.lock().map_err(|_| Error::Other("poisoned".into()))?.clone();
    if !tr.complete {
        return Err(src_err(format!("the RDB transfer from {} ended early", t.address())));
    }
    info!(stream, bytes = tr.bytes, secs = started.elapsed().as_secs_f64(), diskless = tr.diskless, "RDB received");
    Ok(tr)
}

async fn backup_logical_stream(
    session: &mut BackupSession,
    stream: &str,
    t: &RedisTarget,
    dbs: Vec<u32>,
) -> Result<ScanStats> {
    let (reader, writer) = std::io::pipe().map_err(|e| Error::Other(format!("cannot create a pipe: {e}")))?;
    let t2 = t.clone();
    let producer = std::thread::Builder::new()
        .name("lifeboat-redis-scan".into())
        .spawn(move || -> Result<ScanStats> {
            let mut con = t2.connect()?;
            let mut w = BufWriter::with_capacity(1 << 20, writer);
            let broken = |e: std::io::Error| Error::Other(format!("the backup pipeline stopped reading: {e}"));
            w.write_all(LOGICAL_MAGIC).map_err(broken)?;
            let st = scan_keys(&t2, &mut con, &dbs, &mut |r| write_record(&mut w, &r).map_err(broken))?;
            w.write_all(&[TAG_END]).map_err(broken)?;
            w.write_all(&st.keys.to_le_bytes()).map_err(broken)?;
            w.flush().map_err(broken)?;
            Ok(st)
        })
        .map_err(|e| Error::Other(format!("cannot start a thread: {e}")))?;
    let added = session.add_stream(stream, reader).await;
    let produced = join_thread(producer, "the Redis scan thread").await?;
    // The scanner's error explains a short stream; the pipeline's error explains a stalled scanner.
    match (added, produced) {
        (Ok(_), Ok(st)) => Ok(st),
        (Err(e), _) => Err(as_source(e)),
        (Ok(_), Err(e)) => Err(e),
    }
}

// ---------------------------------------------------------------------------
// Restore
// ---------------------------------------------------------------------------

/// Where a Redis snapshot goes.
pub enum RestoreTo<'a> {
    /// A live server or cluster (URL with credentials).
    Server(&'a str),
    /// A data directory for a stopped server: `dump.rdb` (per shard for clusters).
    Dir(&'a Path),
}

pub struct RestoreOptions<'a> {
    pub flush: bool,
    pub force: bool,
    /// Only this stream (one shard of a cluster snapshot).
    pub stream: Option<&'a str>,
}

fn streams_of<'a>(m: &'a Manifest, only: Option<&str>) -> Result<Vec<&'a StreamManifest>> {
    let all: Vec<&StreamManifest> = m.streams.iter().filter(|s| only.is_none_or(|o| s.name == o)).collect();
    if all.is_empty() {
        return Err(Error::Other(format!(
            "snapshot {} has no stream {:?} (streams: {})",
            m.short_id(),
            only.unwrap_or(""),
            m.streams.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(all)
}

pub async fn restore(
    repo: &Repository,
    keys: &Keys,
    index: &Index,
    m: &Manifest,
    to: RestoreTo<'_>,
    o: &RestoreOptions<'_>,
) -> Result<serde_json::Value> {
    let mode = m.source["mode"].as_str().unwrap_or("rdb").to_string();
    let streams = streams_of(m, o.stream)?;
    let started = Instant::now();
    match to {
        RestoreTo::Dir(dir) => {
            if mode != "rdb" {
                return Err(Error::Other(format!(
                    "snapshot {} is a logical Redis snapshot (key records, not an RDB file); restore it into a running server with --to redis://…",
                    m.short_id()
                )));
            }
            let mut files = Vec::new();
            for s in &streams {
                let d = if streams.len() == 1 { dir.to_path_buf() } else { dir.join(s.name.trim_end_matches(".rdb")) };
                std::fs::create_dir_all(&d).map_err(Error::Output)?;
                let path = d.join("dump.rdb");
                if path.exists() && !o.force {
                    return Err(Error::Other(format!("{} exists; pass --force to replace it", path.display())));
                }
                let tmp = d.join(format!(".dump.rdb.lifeboat-{}", std::process::id()));
                let f = std::fs::File::create(&tmp).map_err(Error::Output)?;
                match restore_stream(repo, keys, index, &m.id, s, SyncFile(f)).await {
                    Ok(_) => std::fs::rename(&tmp, &path).map_err(Error::Output)?,
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        return Err(e);
                    }
                }
                files.push(path);
            }
            Ok(serde_json::json!({
                "files": files,
                "bytes": streams.iter().map(|s| s.size).sum::<u64>(),
                "seconds": started.elapsed().as_secs_f64(),
                "next": "start redis-server with --dir pointing there and --dbfilename dump.rdb (with appendonly no: an AOF would be loaded instead)",
            }))
        }
        RestoreTo::Server(url) => {
            let t = RedisTarget::parse(url)?;
            let t2 = t.clone();
            let flush = o.flush;
            let restorer = blocking(move || {
                let ti = inspect_target(&t2)?;
                Restorer::open(&t2, &ti, flush).map(|r| (r, ti.info.cluster))
            })
            .await?;
            let (mut restorer, cluster) = restorer;
            let mut skipped_expired = 0;
            for s in &streams {
                info!(stream = %s.name, target = %t, "restoring");
                restorer = if mode == "logical" {
                    restore_logical_stream(repo, keys, index, m, s, restorer).await?
                } else {
                    let databases = m.source["databases"].as_u64().unwrap_or(16) as u32;
                    let (r, expired) = restore_rdb_stream(repo, keys, index, m, s, restorer, databases).await?;
                    skipped_expired += expired;
                    r
                };
            }
            Ok(serde_json::json!({
                "target": t.to_string(),
                "cluster": cluster,
                "keys_restored": restorer.restored,
                "keys_by_db": restorer.by_db,
                "already_expired": restorer.already_expired + skipped_expired,
                "streams": streams.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
                "seconds": started.elapsed().as_secs_f64(),
            }))
        }
    }
}

/// A file that is fsync'd on flush, so a reported success is on disk.
struct SyncFile(std::fs::File);
impl Write for SyncFile {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.0.sync_all()
    }
}

async fn restore_logical_stream(
    repo: &Repository,
    keys: &Keys,
    index: &Index,
    m: &Manifest,
    s: &StreamManifest,
    mut restorer: Restorer,
) -> Result<Restorer> {
    let (reader, writer) = std::io::pipe().map_err(|e| Error::Other(format!("cannot create a pipe: {e}")))?;
    let consumer = std::thread::Builder::new()
        .name("lifeboat-redis-restore".into())
        .spawn(move || -> Result<Restorer> {
            let mut rr = RecordReader::new(BufReader::with_capacity(1 << 20, reader))?;
            while let Some(r) = rr.next_record()? {
                restorer.push(r)?;
            }
            restorer.flush()?;
            Ok(restorer)
        })
        .map_err(|e| Error::Other(format!("cannot start a thread: {e}")))?;
    let streamed = restore_stream(repo, keys, index, &m.id, s, writer).await;
    let consumed = join_thread(consumer, "the Redis restore thread").await?;
    match (streamed, consumed) {
        (Ok(_), Ok(r)) => Ok(r),
        // A consumer failure breaks the pipe: its error is the real one.
        (_, Err(e)) => Err(e),
        (Err(e), Ok(_)) => Err(e),
    }
}

async fn restore_rdb_stream(
    repo: &Repository,
    keys: &Keys,
    index: &Index,
    m: &Manifest,
    s: &StreamManifest,
    mut restorer: Restorer,
    databases: u32,
) -> Result<(Restorer, u64)> {
    let dir = crate::scratch::ScratchDir::new("redis")?;
    let rdb = dir.path().join("dump.rdb");
    let f = std::fs::File::create(&rdb).map_err(Error::Output)?;
    restore_stream(repo, keys, index, &m.id, s, f).await?;
    let version = m.source["server_version"].as_str().unwrap_or("?").to_string();
    blocking(move || {
        let server = TempServer::start(&dir, databases, &version)?;
        let t = server.target()?;
        let mut con = t.connect()?;
        let info = server_info(&t, &mut con)?;
        let dbs: Vec<u32> = info.keyspace.keys().copied().collect();
        let loaded = info.total_keys();
        // DUMP from the temporary server on one thread, RESTORE into the
        // target on this one: the two round trips overlap.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Record>>(4);
        let scanner = std::thread::Builder::new()
            .name("lifeboat-redis-copy".into())
            .spawn(move || -> Result<ScanStats> {
                let stopped = || Error::Other("the restore stopped".into());
                let mut batch = Vec::with_capacity(BATCH);
                let st = scan_keys(&t, &mut con, &dbs, &mut |r| {
                    batch.push(r);
                    if batch.len() >= BATCH {
                        tx.send(std::mem::take(&mut batch)).map_err(|_| stopped())?;
                    }
                    Ok(())
                })?;
                if !batch.is_empty() {
                    tx.send(batch).map_err(|_| stopped())?;
                }
                Ok(st)
            })
            .map_err(|e| Error::Other(format!("cannot start a thread: {e}")))?;
        let copied = (|| -> Result<()> {
            for batch in rx {
                for r in batch {
                    restorer.push(r)?;
                }
            }
            restorer.flush()
        })();
        // On a restore error the channel is closed, so the scanner stops too.
        let scanned = scanner.join().map_err(|_| Error::Other("the Redis copy thread panicked".into()))?;
        copied?;
        let st = scanned?;
        debug!(loaded, copied = st.keys, "copied keys from the temporary server");
        drop(server);
        drop(dir);
        Ok((restorer, st.vanished))
    })
    .await
}

/// A throwaway redis-server that loads an RDB and listens only on a unix socket.
struct TempServer {
    child: Child,
    sock: PathBuf,
}

impl TempServer {
    fn start(dir: &crate::scratch::ScratchDir, databases: u32, source_version: &str) -> Result<TempServer> {
        let exe = std::env::var("LIFEBOAT_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let sock = dir.path().join("redis.sock");
        let log = dir.path().join("redis.log");
        let mut cmd = Command::new(&exe);
        cmd.args(["--port", "0", "--unixsocket"])
            .arg(&sock)
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(dir.path())
            .args(["--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile"])
            .arg(&log)
            .args(["--databases", &databases.max(16).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| {
            Error::Other(format!(
                "restoring an RDB snapshot into a live server loads it into a temporary redis-server first, and `{exe}` cannot run ({e}); \
                 install redis-server {source_version} or newer (Debian: redis-server) or set LIFEBOAT_REDIS_SERVER, \
                 or restore the file with --to FILE / --to-dir DIR"
            ))
        })?;
        let deadline = Instant::now() + Duration::from_secs(3600);
        let log_tail = || crate::source::tail(&std::fs::read_to_string(&log).unwrap_or_default());
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(Error::Other(format!(
                    "the temporary redis-server could not load the snapshot's RDB (exit {}){}; it may be older than the server that was backed up ({source_version})",
                    crate::source::describe(status),
                    log_tail()
                )));
            }
            if sock.exists()
                && let Ok(mut s) = std::os::unix::net::UnixStream::connect(&sock)
            {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                if s.write_all(b"PING\r\n").is_ok() {
                    let mut buf = [0u8; 64];
                    if let Ok(n) = s.read(&mut buf)
                        && buf[..n].starts_with(b"+PONG")
                    {
                        break;
                    }
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Other(format!(
                    "the temporary redis-server did not finish loading the RDB{}",
                    log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(TempServer { child, sock })
    }

    fn target(&self) -> Result<RedisTarget> {
        RedisTarget::parse(&format!("unix://{}", self.sock.display()))
    }
}

impl Drop for TempServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait for a helper thread without blocking the async runtime.
async fn join_thread<T: Send + 'static>(h: std::thread::JoinHandle<T>, what: &str) -> Result<T> {
    tokio::task::spawn_blocking(move || h.join())
        .await
        .map_err(|e| Error::Other(e.to_string()))?
        .map_err(|_| Error::Other(format!("{what} panicked")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc64_matches_redis() {
        let mut c = Crc64::new();
        c.update(b"123456789");
        assert_eq!(c.value(), 0xe9c6d914c4b8d9ca);
        // Split updates give the same result as one.
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut a = Crc64::new();
        a.update(&data);
        let mut b = Crc64::new();
        for part in data.chunks(13) {
            b.update(part);
        }
        assert_eq!(a.value(), b.value());
    }

    #[test]
    fn records_round_trip_and_truncation_is_detected() {
        let recs = vec![
            Record { db: 0, key: b"a".to_vec(), expire_at_ms: None, payload: vec![0, 1, 2] },
            Record { db: 3, key: vec![0xff, 0], expire_at_ms: Some(1_800_000_000_000), payload: vec![4; 100] },
        ];
        let mut buf = LOGICAL_MAGIC.to_vec();
        for r in &recs {
            write_record(&mut buf, r).unwrap();
        }
        let body = buf.clone();
        buf.push(TAG_END);
        buf.extend_from_slice(&2u64.to_le_bytes());
        let mut rr = RecordReader::new(&buf[..]).unwrap();
        let a = rr.next_record().unwrap().unwrap();
        assert_eq!(a.key, b"a");
        let b = rr.next_record().unwrap().unwrap();
        assert_eq!((b.db, b.expire_at_ms), (3, Some(1_800_000_000_000)));
        assert!(rr.next_record().unwrap().is_none());
        // Without the trailer: an error, not a short success.
        let mut rr = RecordReader::new(&body[..]).unwrap();
        rr.next_record().unwrap();
        rr.next_record().unwrap();
        assert!(rr.next_record().is_err());
    }

    #[test]
    fn info_and_cluster_nodes_parse() {
        let i = parse_info(
            "# Server\r\nredis_version:7.0.15\r\nused_memory:1234\r\ncluster_enabled:0\r\n# Keyspace\r\ndb0:keys=10,expires=2,avg_ttl=0\r\ndb3:keys=5,expires=0,avg_ttl=0\r\n",
        );
        assert_eq!(i.version, "7.0.15");
        assert_eq!(i.total_keys(), 15);
        assert_eq!(i.keyspace[&3].keys, 5);
    }

    #[test]
    fn rdb_reader_handles_both_framings() {
        // A tiny RDB: header, EOF opcode, CRC.
        let mut rdb = b"REDIS0010".to_vec();
        rdb.push(0xff);
        let mut c = Crc64::new();
        c.update(&rdb);
        rdb.extend_from_slice(&c.value().to_le_bytes());
        let mark = b"0123456789012345678901234567890123456789".to_vec();
        for framing in [Framing::Length(rdb.len() as u64), Framing::Mark(mark.clone())] {
            let mut wire = rdb.clone();
            if matches!(framing, Framing::Mark(_)) {
                wire.extend_from_slice(&mark);
            }
            wire.extend_from_slice(b"*1\r\n$4\r\nPING\r\n"); // whatever follows is not ours
            let sock: Box<dyn Duplex> = Box::new(FakeSock(std::io::Cursor::new(wire)));
            let state = Arc::new(Mutex::new(RdbTransfer::default()));
            let mut r = RdbReader::new(BufReader::with_capacity(7, sock), framing, state.clone(), "test".into());
            let mut out = Vec::new();
            r.read_to_end(&mut out).unwrap();
            assert_eq!(out, rdb);
            assert!(state.lock().unwrap().checksum_verified);
        }
        // Cut short: an error naming the byte count.
        let sock: Box<dyn Duplex> = Box::new(FakeSock(std::io::Cursor::new(rdb[..10].to_vec())));
        let state = Arc::new(Mutex::new(RdbTransfer::default()));
        let mut r = RdbReader::new(BufReader::new(sock), Framing::Length(rdb.len() as u64), state, "test".into());
        let e = r.read_to_end(&mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("after 10 of 18 bytes"), "{e}");
    }

    struct FakeSock(std::io::Cursor<Vec<u8>>);
    impl Read for FakeSock {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for FakeSock {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
