//! Redis against real servers: the standalone server and the 3-master
//! cluster started by scripts/test-servers, plus throwaway redis-servers
//! these tests start themselves (restore targets, and sources configured to
//! misbehave). Every round trip compares each key's TYPE, DUMP payload and
//! TTL on both sides.
//!
//! One caveat the comparison has to respect: Redis 7.0 serialises a
//! hashtable-encoded set or hash in its dict's iteration order, which
//! depends on a per-process random hash seed, so two servers holding the
//! same set DUMP it differently. Those keys are compared by content (and
//! encoding); every other key by its exact DUMP payload.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use redis::Value;

const PASSWORD: &str = "lifeboat-test";

fn redis_url() -> String {
    std::env::var("LIFEBOAT_TEST_REDIS_URL")
        .expect("LIFEBOAT_TEST_REDIS_URL is not set: run the tests with scripts/test")
}
fn cluster_url() -> String {
    std::env::var("LIFEBOAT_TEST_REDIS_CLUSTER")
        .expect("LIFEBOAT_TEST_REDIS_CLUSTER is not set: run the tests with scripts/test")
}

fn con(url: &str) -> redis::Connection {
    let c = redis::Client::open(url).unwrap();
    let con = c.get_connection_with_timeout(Duration::from_secs(10)).unwrap_or_else(|e| panic!("connect {url}: {e}"));
    con.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    con
}

/// A redis-server of our own on a free port, killed on drop.
struct TempRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TempRedis {
    fn start(extra: &[&str]) -> TempRedis {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, extra)
    }

    fn start_in(dir: tempfile::TempDir, extra: &[&str]) -> TempRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--requirepass",
            PASSWORD,
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .arg("--logfile")
        .arg(dir.path().join("log"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let mut child = cmd.spawn().expect("redis-server (Debian: redis-server) must be installed");
        let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                panic!(
                    "redis-server exited with {s}: {}",
                    std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
                );
            }
            if let Ok(c) = redis::Client::open(url.as_str())
                && let Ok(mut k) = c.get_connection_with_timeout(Duration::from_secs(1))
                && redis::cmd("PING").query::<String>(&mut k).is_ok()
            {
                break;
            }
            assert!(Instant::now() < deadline, "redis-server on {port} did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        TempRedis { child, port, dir }
    }

    fn url(&self) -> String {
        format!("redis://:{PASSWORD}@127.0.0.1:{}", self.port)
    }
}

impl Drop for TempRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_policy(f: &Fixture, body: &str) -> String {
    let p = f.dir.path().join("policy.toml");
    std::fs::write(&p, format!("[[repository]]\nname = \"primary\"\nurl = \"{}\"\n\n{body}", f.repo)).unwrap();
    p.display().to_string()
}

fn redis_job(name: &str, mode: &str) -> String {
    format!("[[job]]\nname = \"{name}\"\nkind = \"redis\"\nurl = \"env:REDIS_URL\"\nmode = \"{mode}\"\n\n")
}

fn backup_job(f: &Fixture, policy: &str, job: &str, url: &str) -> Output {
    bin()
        .args(["--json", "backup", "--policy", policy, job, "--write-key", f.wk()])
        .env("REDIS_URL", url)
        .output()
        .unwrap()
}

fn backup_ok(f: &Fixture, policy: &str, job: &str, url: &str) -> String {
    let out = backup_job(f, policy, job, url);
    let js: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert!(!stderr(&out).contains(PASSWORD), "the password must never be printed: {}", stderr(&out));
    js["id"].as_str().unwrap().to_string()
}

fn snapshots(f: &Fixture) -> Vec<serde_json::Value> {
    let out = run(&["--json", "snapshots", "--repo", &f.repo, "--identity", f.id()]);
    serde_json::from_str::<serde_json::Value>(&ok(&out)).unwrap().as_array().unwrap().clone()
}

fn source_of(f: &Fixture, id: &str) -> serde_json::Value {
    snapshots(f).into_iter().find(|s| s["id"] == id).unwrap()["source"].clone()
}

fn restore_to(f: &Fixture, id: &str, url: &str, extra: &[&str]) -> Output {
    bin()
        .args(["--json", "restore", "--repo", &f.repo, "--identity", f.id(), id, "--to", "env:TARGET_URL"])
        .args(extra)
        .env("TARGET_URL", url)
        .output()
        .unwrap()
}

// ---- data ----

/// `n` keys of every type, spread over `dbs`, a third with a TTL; plus one
/// string over 10 MiB in the first db. Keys carry a hash tag so the same
/// generator works on a cluster (through `exec`).
fn populate(exec: &mut dyn FnMut(u32, redis::Pipeline), n: usize, dbs: &[u32], big: bool) {
    let mut pipes: BTreeMap<u32, redis::Pipeline> = BTreeMap::new();
    let mut count: BTreeMap<u32, usize> = BTreeMap::new();
    for i in 0..n {
        let db = dbs[i % dbs.len()];
        let p = pipes.entry(db).or_insert_with(redis::pipe);
        let k = |kind: &str| format!("{kind}:{{t{}}}:{i}", i % 97);
        let large = i % 997 == 0; // a few collections past the compact encodings
        match i % 10 {
            0 | 1 => {
                p.cmd("SET").arg(k("str")).arg(format!("value-{i}-{}", "x".repeat(i % 50))).ignore();
            }
            2 => {
                p.cmd("SET").arg(k("int")).arg(i as i64 * 7919).ignore();
            }
            3 => {
                let key: Vec<u8> = [b"bin:".as_slice(), &(i as u32).to_le_bytes(), &[0xff, 0x00, 0x80]].concat();
                p.cmd("SET").arg(key.clone()).arg(random_bytes(i as u64, 16 + i % 300)).ignore();
                if i % 3 == 0 {
                    p.cmd("PEXPIRE").arg(key).arg(3_600_000 + i as u64).ignore();
                }
                *count.entry(db).or_default() += 1;
                continue;
            }
            4 => {
                let fields = if large { 300 } else { 1 + i % 8 };
                let mut c = redis::cmd("HSET");
                c.arg(k("hash"));
                for j in 0..fields {
                    c.arg(format!("f{j}")).arg(format!("v{}", i * j));
                }
                p.add_command(c).ignore();
            }
            5 => {
                let items = if large { 3000 } else { 1 + i % 10 };
                let mut c = redis::cmd("RPUSH");
                c.arg(k("list"));
                for j in 0..items {
                    c.arg(format!("item-{j}-{}", j * i));
                }
                p.add_command(c).ignore();
            }
            6 => {
                let mut c = redis::cmd("SADD");
                c.arg(k("set"));
                if i % 20 == 6 {
                    for j in 0..(1 + i % 6) {
                        c.arg(j * 31 + i); // integers: intset
                    }
                } else {
                    let members = if large { 700 } else { 1 + i % 6 };
                    for j in 0..members {
                        c.arg(format!("m{j}"));
                    }
                }
                p.add_command(c).ignore();
            }
            7 => {
                let members = if large { 400 } else { 1 + i % 7 };
                let mut c = redis::cmd("ZADD");
                c.arg(k("zset"));
                for j in 0..members {
                    c.arg(j as f64 * 1.5 - i as f64).arg(format!("z{j}"));
                }
                p.add_command(c).ignore();
            }
            8 => {
                let key = k("stream");
                for j in 0..(1 + i % 4) {
                    p.cmd("XADD")
                        .arg(&key)
                        .arg(format!("{}-{}", 1_700_000_000_000u64 + i as u64, j + 1))
                        .arg("f")
                        .arg(j)
                        .arg("g")
                        .arg(i)
                        .ignore();
                }
                if i % 40 == 8 {
                    p.cmd("XGROUP").arg("CREATE").arg(&key).arg("readers").arg("0").ignore();
                    p.cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg("readers")
                        .arg("alice")
                        .arg("COUNT")
                        .arg(1)
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(">")
                        .ignore();
                }
            }
            _ => {
                p.cmd("SET").arg(k("utf8")).arg("héllo wörld ✓").ignore();
            }
        }
        if i % 3 == 0 {
            // Every kind gets keys with and without a TTL (an hour or more).
            let key = match i % 10 {
                0 | 1 => k("str"),
                2 => k("int"),
                4 => k("hash"),
                5 => k("list"),
                6 => k("set"),
                7 => k("zset"),
                8 => k("stream"),
                _ => k("utf8"),
            };
            p.cmd("PEXPIRE").arg(key).arg(3_600_000 + i as u64 * 13).ignore();
        }
        let c = count.entry(db).or_default();
        *c += 1;
        if (*c).is_multiple_of(500) {
            exec(db, std::mem::replace(p, redis::pipe()));
        }
    }
    for (db, p) in pipes {
        if p.cmd_iter().next().is_some() {
            exec(db, p);
        }
    }
    if big {
        let mut p = redis::pipe();
        p.cmd("SET").arg("big:value").arg(random_bytes(42, 10 * 1024 * 1024 + 12345)).ignore();
        exec(dbs[0], p);
    }
}

#[derive(Debug, Clone, PartialEq)]
struct KeyState {
    ty: String,
    enc: String,
    dump: Vec<u8>,
    pttl: i64,
    /// Sorted members/pairs, for hashtable sets and hashes.
    content: Option<Vec<Vec<u8>>>,
}

type State = BTreeMap<(u32, Vec<u8>), KeyState>;

fn bulk(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.as_bytes().to_vec(),
        Value::Okay => b"OK".to_vec(),
        other => panic!("expected a string, got {other:?}"),
    }
}

/// Every key of `dbs` on one server: type, encoding, DUMP, absolute expiry (PEXPIRETIME, ms).
fn capture(url: &str, dbs: &[u32], into: &mut State) {
    let mut c = con(url);
    for &db in dbs {
        redis::cmd("SELECT").arg(db).query::<()>(&mut c).unwrap();
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut c).unwrap();
        for chunk in keys.chunks(500) {
            let mut p = redis::pipe();
            for k in chunk {
                p.cmd("TYPE").arg(k).cmd("OBJECT").arg("ENCODING").arg(k).cmd("DUMP").arg(k).cmd("PEXPIRETIME").arg(k);
            }
            let r: Vec<Value> = p.query(&mut c).unwrap();
            for (i, k) in chunk.iter().enumerate() {
                let ty = String::from_utf8(bulk(&r[4 * i])).unwrap();
                let enc = String::from_utf8(bulk(&r[4 * i + 1])).unwrap();
                let pttl = match r[4 * i + 3] {
                    Value::Int(n) => n,
                    ref o => panic!("{o:?}"),
                };
                let content = if enc == "hashtable" && (ty == "set" || ty == "hash") {
                    let mut items: Vec<Vec<u8>> = if ty == "set" {
                        redis::cmd("SMEMBERS").arg(k).query(&mut c).unwrap()
                    } else {
                        let pairs: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL").arg(k).query(&mut c).unwrap();
                        pairs.into_iter().map(|(a, b)| [a, b"\0".to_vec(), b].concat()).collect()
                    };
                    items.sort();
                    Some(items)
                } else {
                    None
                };
                into.insert((db, k.clone()), KeyState { ty, enc, dump: bulk(&r[4 * i + 2]), pttl, content });
            }
        }
    }
}

fn state_of(url: &str, dbs: &[u32]) -> State {
    let mut s = State::new();
    capture(url, dbs, &mut s);
    s
}

/// Same keys, types and values; TTLs within 2 s (the time between captures is allowed for).
#[track_caller]
fn assert_same(source: &State, restored: &State, elapsed_ms: i64) {
    if let Some(k) = source.keys().find(|k| !restored.contains_key(*k)) {
        panic!("key {k:?} is missing after restore ({} of {} keys present)", restored.len(), source.len());
    }
    if let Some(k) = restored.keys().find(|k| !source.contains_key(*k)) {
        panic!("restore created key {k:?} that was not in the source");
    }
    let mut by_payload = 0;
    for (k, a) in source {
        let b = &restored[k];
        assert_eq!(a.ty, b.ty, "type of {k:?}");
        assert_eq!(a.enc, b.enc, "encoding of {k:?}");
        match &a.content {
            Some(c) => assert_eq!(Some(c), b.content.as_ref(), "content of {k:?}"),
            None => {
                assert!(a.dump == b.dump, "DUMP payload of {k:?} differs ({} vs {} bytes)", a.dump.len(), b.dump.len());
                by_payload += 1;
            }
        }
        if a.pttl < 0 {
            assert_eq!(a.pttl, b.pttl, "{k:?} has no TTL in the source");
        } else {
            assert!(b.pttl >= 0, "{k:?} lost its TTL");
            // Absolute expiry times (PEXPIRETIME): no drift from how long the checks take.
            let _ = elapsed_ms;
            let drift = a.pttl - b.pttl;
            assert!(drift.abs() <= 2000, "TTL of {k:?}: {} ms vs {} ms ({elapsed_ms} ms apart)", a.pttl, b.pttl);
        }
    }
    assert!(by_payload * 10 > source.len() * 9, "most keys must compare by exact DUMP payload");
}

fn count_types(s: &State) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for v in s.values() {
        *m.entry(v.ty.clone()).or_default() += 1;
    }
    m
}

// ---- tests ----

/// The acceptance round trip: 100k keys of every type with and without
/// TTLs across db0 and db3, backed up in both modes from the project's test
/// server, restored into fresh servers, through --to-dir and --to FILE.
#[test]
fn standalone_rdb_and_logical_round_trip() {
    let url = redis_url();
    let mut c = con(&url);
    redis::cmd("FLUSHALL").query::<()>(&mut c).unwrap();
    populate(
        &mut |db, p| {
            redis::cmd("SELECT").arg(db).query::<()>(&mut c).unwrap();
            p.query::<()>(&mut c).unwrap();
        },
        100_000,
        &[0, 3],
        true,
    );
    let t0 = Instant::now();
    let source = state_of(&url, &[0, 3]);
    assert_eq!(source.len(), 100_001);
    let types = count_types(&source);
    for t in ["string", "hash", "list", "set", "zset", "stream"] {
        assert!(types.get(t).copied().unwrap_or(0) >= 5000, "{t}: {types:?}");
    }
    assert!(source.values().any(|k| k.enc == "hashtable") && source.values().any(|k| k.enc == "quicklist"));
    assert!(source.values().filter(|k| k.pttl > 0).count() > 30_000);

    let f = Fixture::local();
    let policy = write_policy(&f, &(redis_job("cache-rdb", "rdb") + &redis_job("cache-logical", "logical")));
    let rdb_id = backup_ok(&f, &policy, "cache-rdb", &url);
    let logical_id = backup_ok(&f, &policy, "cache-logical", &url);

    // What the manifest says about the server.
    let m = source_of(&f, &rdb_id);
    assert_eq!(m["mode"], "rdb");
    assert!(m["server_version"].as_str().unwrap().starts_with('7'), "{m}");
    assert_eq!(m["keyspace"]["db0"]["keys"], 50_001);
    assert_eq!(m["keyspace"]["db3"]["keys"], 50_000);
    assert!(m["used_memory"].as_u64().unwrap() > 10 << 20);
    assert!(m["replication_offset"].as_i64().unwrap() >= 0, "{m}");
    assert_eq!(m["shards"][0]["diskless"], true, "the default 7.0 server streams diskless: {m}");
    assert_eq!(m["shards"][0]["checksum_verified"], true);
    assert!(!m.to_string().contains(PASSWORD));
    let lm = source_of(&f, &logical_id);
    assert_eq!(lm["mode"], "logical");
    assert_eq!(lm["keys"], 100_001);
    for (t, n) in &types {
        assert_eq!(lm["keys_by_type"][t].as_u64().unwrap() as usize, *n, "{t} in {lm}");
    }

    for (mode, id) in [("rdb", &rdb_id), ("logical", &logical_id)] {
        let target = TempRedis::start(&[]);
        let out = restore_to(&f, id, &target.url(), &[]);
        let js: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        assert_eq!(js["result"]["keys_restored"], 100_001, "{mode}: {js}");
        let restored = state_of(&target.url(), &[0, 3]);
        assert_same(&source, &restored, t0.elapsed().as_millis() as i64 - 1000);
    }

    // --to-dir: a data dir a fresh redis-server loads as it is.
    let data = tempfile::tempdir().unwrap();
    ok(&run(&["restore", "--repo", &f.repo, "--identity", f.id(), &rdb_id, "--to-dir", data.path().to_str().unwrap()]));
    let rdb = std::fs::read(data.path().join("dump.rdb")).unwrap();
    assert!(rdb.starts_with(b"REDIS"));
    let fresh = TempRedis::start_in(data, &["--dbfilename", "dump.rdb"]);
    let loaded = state_of(&fresh.url(), &[0, 3]);
    assert_same(&source, &loaded, t0.elapsed().as_millis() as i64 - 1000);
    // --to FILE writes the same bytes; refusing to overwrite without --force.
    let file = f.dir.path().join("copy.rdb");
    ok(&run(&["restore", "--repo", &f.repo, "--identity", f.id(), &rdb_id, "--to", file.to_str().unwrap()]));
    assert!(std::fs::read(&file).unwrap() == rdb);
    let again = run(&[
        "restore",
        "--repo",
        &f.repo,
        "--identity",
        f.id(),
        &rdb_id,
        "--to-dir",
        fresh.dir.path().to_str().unwrap(),
    ]);
    assert!(!again.status.success() && stderr(&again).contains("--force"), "{}", stderr(&again));
    // A logical snapshot is not a data dir.
    let out = run(&[
        "restore",
        "--repo",
        &f.repo,
        "--identity",
        f.id(),
        &logical_id,
        "--to-dir",
        f.dir.path().join("x").to_str().unwrap(),
    ]);
    assert!(!out.status.success() && stderr(&out).contains("--to redis://"), "{}", stderr(&out));
}

fn cluster_nodes() -> Vec<String> {
    let base = cluster_url();
    let mut c = con(&base);
    let text: String = redis::cmd("CLUSTER").arg("NODES").query(&mut c).unwrap();
    let (prefix, _) = base.rsplit_once('@').unwrap();
    text.lines()
        .filter(|l| l.contains("master"))
        .map(|l| {
            let addr = l.split_whitespace().nth(1).unwrap().split('@').next().unwrap();
            format!("{prefix}@{addr}")
        })
        .collect()
}

fn cluster_state() -> State {
    let mut s = State::new();
    for n in cluster_nodes() {
        capture(&n, &[0], &mut s);
    }
    s
}

#[test]
fn cluster_round_trip_into_the_cluster_and_a_standalone_server() {
    let nodes = cluster_nodes();
    assert_eq!(nodes.len(), 3, "the test cluster has 3 masters");
    for n in &nodes {
        redis::cmd("FLUSHALL").query::<()>(&mut con(n)).unwrap();
    }
    let client = redis::cluster::ClusterClient::new(vec![cluster_url()]).unwrap();
    let mut cc = client.get_connection().unwrap();
    populate(
        &mut |_, p| {
            // Keys of one pipeline share hash tags only by chance: send them one by one per slot.
            let mut cp = redis::cluster::cluster_pipe();
            for cmd in p.cmd_iter() {
                cp.add_command(cmd.clone());
            }
            cp.query::<()>(&mut cc).unwrap();
        },
        20_000,
        &[0],
        false,
    );
    let t0 = Instant::now();
    let source = cluster_state();
    assert_eq!(source.len(), 20_000);

    let f = Fixture::local();
    let policy = write_policy(&f, &(redis_job("sessions-rdb", "rdb") + &redis_job("sessions-logical", "logical")));
    let rdb_id = backup_ok(&f, &policy, "sessions-rdb", &cluster_url());
    let logical_id = backup_ok(&f, &policy, "sessions-logical", &cluster_url());
    for id in [&rdb_id, &logical_id] {
        let snap = snapshots(&f).into_iter().find(|s| &s["id"] == id).unwrap();
        assert_eq!(snap["streams"].as_array().unwrap().len(), 3, "one stream per master: {snap}");
        assert_eq!(snap["source"]["topology"], "cluster");
        let slots: u64 = snap["source"]["shards"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| {
                s["slots"].as_array().unwrap().iter().map(|r| r[1].as_u64().unwrap() - r[0].as_u64().unwrap() + 1)
            })
            .sum();
        assert_eq!(slots, 16384);
    }

    for id in [&rdb_id, &logical_id] {
        // Into a standalone server: every shard's keys.
        let target = TempRedis::start(&[]);
        ok(&restore_to(&f, id, &target.url(), &[]));
        assert_same(&source, &state_of(&target.url(), &[0]), t0.elapsed().as_millis() as i64 - 1000);
        // Back into the cluster, which still holds the data: needs --flush.
        let out = restore_to(&f, id, &cluster_url(), &[]);
        assert!(!out.status.success() && stderr(&out).contains("--flush"), "{}", stderr(&out));
        let out = restore_to(&f, id, &cluster_url(), &["--flush"]);
        let js: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        assert_eq!(js["result"]["keys_restored"], 20_000);
        assert_eq!(js["result"]["cluster"], true);
        assert_same(&source, &cluster_state(), t0.elapsed().as_millis() as i64 - 1000);
    }
}

#[test]
fn wrong_password_is_named_and_leaves_no_snapshot() {
    let f = Fixture::local();
    let policy = write_policy(&f, &(redis_job("a", "rdb") + &redis_job("b", "logical")));
    let bad = redis_url().replace(PASSWORD, "not-the-password");
    for job in ["a", "b"] {
        let out = backup_job(&f, &policy, job, &bad);
        assert_eq!(out.status.code(), Some(1));
        let e = stderr(&out);
        assert!(e.contains("rejected the password") && e.contains("no snapshot was written"), "{e}");
        assert!(!e.contains("not-the-password"), "{e}");
    }
    assert!(snapshots(&f).is_empty());
    // Restore targets too.
    let src = TempRedis::start(&[]);
    redis::cmd("SET").arg("k").arg("v").query::<()>(&mut con(&src.url())).unwrap();
    let id = backup_ok(&f, &policy, "b", &src.url());
    let out = restore_to(&f, &id, &src.url().replace(PASSWORD, "nope-nope"), &[]);
    assert!(!out.status.success() && stderr(&out).contains("rejected the password"), "{}", stderr(&out));
}

#[test]
fn psync_refused_suggests_logical_mode() {
    let src = TempRedis::start(&["--rename-command", "SYNC", "", "--rename-command", "PSYNC", ""]);
    let mut c = con(&src.url());
    redis::cmd("SET").arg("a").arg("1").query::<()>(&mut c).unwrap();
    redis::cmd("HSET").arg("h").arg("f").arg("v").query::<()>(&mut c).unwrap();
    let f = Fixture::local();
    let policy = write_policy(&f, &(redis_job("managed", "rdb") + &redis_job("managed-logical", "logical")));
    let out = backup_job(&f, &policy, "managed", &src.url());
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains("refused replication") && e.contains("mode = \"logical\""), "{e}");
    assert!(snapshots(&f).is_empty());
    // And the suggestion works.
    let id = backup_ok(&f, &policy, "managed-logical", &src.url());
    let target = TempRedis::start(&[]);
    ok(&restore_to(&f, &id, &target.url(), &[]));
    assert_same(&state_of(&src.url(), &[0]), &state_of(&target.url(), &[0]), 0);
}

#[test]
fn non_empty_target_needs_flush() {
    let src = TempRedis::start(&[]);
    let mut c = con(&src.url());
    for i in 0..50 {
        redis::cmd("SET").arg(format!("new:{i}")).arg(i).query::<()>(&mut c).unwrap();
    }
    let f = Fixture::local();
    let policy = write_policy(&f, &(redis_job("rdb", "rdb") + &redis_job("logical", "logical")));
    let ids = [backup_ok(&f, &policy, "rdb", &src.url()), backup_ok(&f, &policy, "logical", &src.url())];
    for id in &ids {
        let target = TempRedis::start(&[]);
        let mut t = con(&target.url());
        for k in ["old:1", "old:2", "old:3"] {
            redis::cmd("SET").arg(k).arg("keep me").query::<()>(&mut t).unwrap();
        }
        let out = restore_to(&f, id, &target.url(), &[]);
        assert_eq!(out.status.code(), Some(1));
        let e = stderr(&out);
        assert!(e.contains("is not empty (3 keys") && e.contains("--flush"), "{e}");
        assert!(!e.contains(PASSWORD), "{e}");
        assert_eq!(redis::cmd("DBSIZE").query::<u64>(&mut t).unwrap(), 3, "a refused restore changes nothing");
        ok(&restore_to(&f, id, &target.url(), &["--flush"]));
        assert_eq!(redis::cmd("DBSIZE").query::<u64>(&mut t).unwrap(), 50);
        assert!(!redis::cmd("EXISTS").arg("old:1").query::<bool>(&mut t).unwrap());
    }
}

#[test]
fn connection_dropped_mid_transfer_commits_nothing() {
    let src = TempRedis::start(&["--repl-diskless-sync-delay", "0"]);
    let mut c = con(&src.url());
    populate(&mut |_, p| p.query::<()>(&mut c).unwrap(), 20_000, &[0], false);
    // Slow the server's RDB writer down (100 µs per key: ~2 s) so the kill lands mid-stream.
    redis::cmd("CONFIG").arg("SET").arg("rdb-key-save-delay").arg(100).query::<()>(&mut c).unwrap();
    let f = Fixture::local();
    let policy = write_policy(&f, &redis_job("cache", "rdb"));
    let child = bin()
        .args(["backup", "--policy", &policy, "cache", "--write-key", f.wk()])
        .env("REDIS_URL", src.url())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let info: String = redis::cmd("INFO").arg("persistence").query(&mut c).unwrap();
        if info.contains("rdb_bgsave_in_progress:1") {
            break;
        }
        assert!(Instant::now() < deadline, "the backup never started a transfer");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let killed: u64 = redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("replica").query(&mut c).unwrap();
    assert_eq!(killed, 1);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains("no snapshot was written") && e.contains("bytes of the RDB"), "{e}");
    assert!(snapshots(&f).is_empty(), "a cut transfer must not become a snapshot");
    // The repository is still sound.
    ok(&run(&["check", "--repo", &f.repo, "--identity", f.id()]));
}
