//! Proof: `verify` and `drill` against a real PostgreSQL, a real redis-server
//! and two S3 regions.

mod common;

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

/// A redis-server of this test's own (the shared one is busy with other tests' keys).
struct OwnRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}
impl OwnRedis {
    fn start() -> OwnRedis {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/install-deps installs it)");
        // Owned before waiting, so a server that never answers is killed too.
        let own = OwnRedis { child, port, _dir: dir };
        for _ in 0..100 {
            if let Ok(mut c) = redis::Client::open(own.url()).unwrap().get_connection()
                && redis::cmd("PING").query::<String>(&mut c).is_ok()
            {
                return own;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server did not start");
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}
impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lifeboat(f: &Fixture, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = bin();
    c.args(args).env("LIFEBOAT_IDENTITY_FILE", f.id()).env("LIFEBOAT_WRITE_KEY_FILE", f.wk());
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout(o)).unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(o), stderr(o)))
}

fn policy(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[test]
fn verify_and_drills_against_postgres_redis_and_two_s3_regions() {
    let f = Fixture::s3();
    let primary_bucket = f.repo.trim_start_matches("s3://").split('/').next().unwrap().to_string();
    let replica_bucket = new_bucket("eu-west-1");
    let replica = s3_url(&replica_bucket, "eu-west-1", "repo");

    // PostgreSQL: a database of this test's own, with rows a SQL assertion can see.
    let db = format!("proof_{}", hex::encode(rand::random::<[u8; 4]>()));
    psql("postgres", &format!("create database {db}"));
    psql(
        &db,
        "create table orders (id serial primary key, amount numeric, created_at timestamptz default now());
         insert into orders (amount) select g * 1.5 from generate_series(1, 1000) g;
         create table items (id int primary key, name text);
         insert into items select g, 'item ' || g from generate_series(1, 250) g;",
    );
    // Redis: 2,000 keys of four types in two databases.
    let redis = OwnRedis::start();
    {
        let mut c = redis::Client::open(redis.url()).unwrap().get_connection().unwrap();
        let mut p = redis::pipe();
        for i in 0..500 {
            p.cmd("SET").arg(format!("s:{i}")).arg(i).ignore();
            p.cmd("HSET").arg(format!("h:{i}")).arg("f").arg(i).ignore();
            p.cmd("RPUSH").arg(format!("l:{i}")).arg(i).ignore();
        }
        p.query::<()>(&mut c).unwrap();
        redis::cmd("SELECT").arg(3).query::<()>(&mut c).unwrap();
        for i in 0..500 {
            redis::cmd("SADD").arg(format!("set:{i}")).arg(i).query::<()>(&mut c).unwrap();
        }
    }
    // Files for a command job.
    let data = f.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.bin"), mixed_data(7, 3 << 20)).unwrap();

    let body = |orders_rto: &str, expect: &str| {
        format!(
            r#"[[repository]]
name = "us-east-1"
url = "{primary}"
region = "us-east-1"

[[repository]]
name = "eu-west-1"
url = "{replica}"

[[job]]
name = "files"
kind = "command"
command = "tar -C {data} -c ."
schedule = "0 * * * *"
rpo = "1h"
rto = "1h"
[job.verify]
command = "tar -x && test -s a.bin"

[[job]]
name = "orders-db"
kind = "postgres"
url = "env:PROOF_PG_URL"
databases = ["{db}"]
schedule = "0 */6 * * *"
tier = "critical"
rpo = "6h"
rto = "{orders_rto}"
[[job.verify.assert]]
sql = "select count(*) from orders where created_at > now() - interval '1 day'"
expect = "{expect}"

[[job]]
name = "cache"
kind = "redis"
url = "env:PROOF_REDIS_URL"
mode = "rdb"
schedule = "0 * * * *"
rpo = "1h"
rto = "1h"

[[scenario]]
name = "region-loss"
kind = "region-loss"
replica = "eu-west-1"
runbook = "runbooks/region-loss.md"

[[scenario]]
name = "database-loss"
kind = "database-loss"
jobs = ["orders-db", "cache"]
runbook = "runbooks/database-failure.md"
"#,
            primary = f.repo,
            data = data.display(),
        )
    };
    let good = policy(f.dir.path(), "good.toml", &body("15m", "= 1000"));
    let env = [("PROOF_PG_URL", url_for("postgres")), ("PROOF_REDIS_URL", redis.url())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    // Backups (each run replicates to eu-west-1). The files job runs first, so its packs are known.
    ok(&lifeboat(&f, &["run", "--policy", &good, "files"], &env));
    let files_packs = s3_keys(&primary_bucket, "us-east-1", "repo/packs/");
    assert!(!files_packs.is_empty());
    ok(&lifeboat(&f, &["run", "--policy", &good, "orders-db"], &env));
    ok(&lifeboat(&f, &["run", "--policy", &good, "cache"], &env));

    // verify: each kind restores into its scratch target and matches its manifest.
    let v = json(&lifeboat(&f, &["--json", "verify", "--policy", &good, "orders-db"], &env));
    assert_eq!(v["ok"], true, "{v:#}");
    let checks = v["checks"].as_array().unwrap();
    let fp = checks.iter().find(|c| c["name"] == "fingerprint").unwrap();
    assert!(fp["detail"].as_str().unwrap().contains("2 tables, 1250 rows"), "{fp}");
    let a = checks.iter().find(|c| c["name"] == "assertion").unwrap();
    assert!(a["ok"] == true && a["detail"].as_str().unwrap().contains("→ 1000"), "{a}");
    let v = json(&lifeboat(&f, &["--json", "verify", "--policy", &good, "cache"], &env));
    assert_eq!(v["ok"], true, "{v:#}");
    let kd = v["checks"].as_array().unwrap().iter().find(|c| c["name"] == "keys per database").unwrap().clone();
    assert!(kd["detail"].as_str().unwrap().starts_with("2000 keys in 2 database(s)"), "{kd}");
    let v = json(&lifeboat(&f, &["--json", "verify", "--policy", &good, "files", "--repository", "eu-west-1"], &env));
    assert_eq!(v["ok"], true, "{v:#}");
    assert_eq!(v["repository"], "eu-west-1");
    // Verification records land in the primary (where reports read them).
    assert_eq!(s3_keys(&primary_bucket, "us-east-1", "repo/records/verification/").len(), 3);

    // A failing assertion fails verify with the query, the value and the expectation.
    let (hook, alerts) = http_sink();
    let bad = policy(
        f.dir.path(),
        "bad-assert.toml",
        &format!("{}\n[alerts]\nwebhook = \"env:PROOF_HOOK\"\n", body("15m", "> 1000000")),
    );
    let mut env_hook = env.clone();
    env_hook.push(("PROOF_HOOK", &hook));
    let out = lifeboat(&f, &["verify", "--policy", &bad, "orders-db"], &env_hook);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("[FAIL] assertion") && text.contains("→ 1000, expected > 1000000"), "{text}");
    assert!(text.contains("job orders-db snapshot ") && text.contains("verification FAILED"), "{text}");
    let (method, _, alert) = alerts.recv_timeout(Duration::from_secs(10)).expect("a failed verification alerts");
    assert_eq!(method, "POST");
    let alert: serde_json::Value = serde_json::from_str(&alert).unwrap();
    assert_eq!(alert["job"], "orders-db");
    assert_eq!(alert["kind"], "verification");
    assert!(alert["text"].as_str().unwrap().contains("expected > 1000000"), "{alert}");

    // Region-loss drill: everything from eu-west-1; RTO and RPO measured and within target.
    let out = lifeboat(&f, &["--json", "drill", "--policy", &good, "--scenario", "region-loss"], &env);
    let d = json(&out);
    assert!(out.status.success(), "{d:#}\n{}", stderr(&out));
    let d = &d[0];
    assert_eq!(d["repository"], "eu-west-1");
    assert_eq!(d["ok"], true);
    let jobs = d["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 3);
    for j in jobs {
        assert_eq!(j["verified"], true, "{j:#}");
        let rto = j["rto_secs"].as_f64().unwrap();
        let rpo = j["rpo_secs"].as_f64().unwrap();
        assert!(rto > 0.0 && rto < 900.0, "{j:#}");
        assert!(rpo > 0.0 && rpo < 3600.0, "{j:#}");
        assert_eq!(j["rto_ok"], true);
        assert_eq!(j["rpo_ok"], true);
    }

    // Database-loss drill: from the primary.
    let out = lifeboat(&f, &["--json", "drill", "--policy", &good, "--scenario", "database-loss"], &env);
    let d = json(&out);
    assert!(out.status.success(), "{d:#}");
    assert_eq!(d[0]["repository"], "us-east-1");
    assert_eq!(d[0]["jobs"].as_array().unwrap().len(), 2);
    // Drill records are in both repositories, under the same key.
    let dp = s3_keys(&primary_bucket, "us-east-1", "repo/records/drill/");
    let dr = s3_keys(&replica_bucket, "eu-west-1", "repo/records/drill/");
    assert_eq!(dp.len(), 2, "{dp:?}");
    assert_eq!(dr.len(), 1, "{dr:?}");
    assert!(dp.contains(&dr[0]));

    // An impossible target: RTO 1 ms fails, with the measured number.
    let tight = policy(f.dir.path(), "tight.toml", &body("1ms", "= 1000"));
    let out = lifeboat(&f, &["drill", "--policy", &tight, "--scenario", "database-loss"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    let line = text.lines().find(|l| l.starts_with("orders-db")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("1 ms") && line.contains("FAIL: job orders-db: RTO ") && line.contains("exceeds the target 1 ms"),
        "{line}"
    );
    let d = json(&lifeboat(&f, &["--json", "drill", "--policy", &tight, "--scenario", "database-loss"], &env));
    let j = d[0]["jobs"].as_array().unwrap().iter().find(|j| j["job"] == "orders-db").unwrap().clone();
    assert_eq!(j["rto_ok"], false);
    assert!(j["rto_secs"].as_f64().unwrap() > 0.001, "{j}");
    assert_eq!(j["verified"], true);

    // A corrupted snapshot in the surviving region: the drill fails and names the job and snapshot.
    let files_snapshot = {
        let s = json(&lifeboat(&f, &["--json", "snapshots", "--repo", &replica, "--name", "files"], &[]));
        s.as_array().unwrap()[0]["id"].as_str().unwrap().to_string()
    };
    for key in &files_packs {
        s3_flip_byte(&replica_bucket, "eu-west-1", key);
    }
    let out = lifeboat(&f, &["drill", "--policy", &good, "--scenario", "region-loss"], &env);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let line = text.lines().find(|l| l.starts_with("files")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(&format!("FAIL: job files snapshot {}: verification FAILED", &files_snapshot[..8]))
            && line.contains("corrupt"),
        "{line}"
    );
    // The other jobs of the drill still restore and pass.
    assert!(text.lines().any(|l| l.starts_with("orders-db") && l.ends_with("PASS")), "{text}");
    assert!(text.contains("FAIL: 2 of 3 job(s) passed; runbook: runbooks/region-loss.md"), "{text}");

    psql("postgres", &format!("drop database {db} with (force)"));
}
