//! PostgreSQL against the real server started by scripts/test-servers:
//! logical round trips with a fingerprint, consistency under a concurrent
//! writer, physical backup + WAL archive + point-in-time restore, bad input.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn new_db(prefix: &str) -> String {
    let name = format!("{prefix}_{}", hex::encode(rand::random::<[u8; 4]>()));
    psql("postgres", &format!("create database {name}"));
    name
}

fn plain_dump(db: &str) -> String {
    let out = Command::new(format!("{}/pg_dump", pg_bin())).args(["--no-owner", "-d", &url_for(db)]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // pg_dump >= 15.14 brackets its output with random \restrict keys.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[track_caller]
fn assert_same_dump(a: &str, b: &str) {
    if a != b {
        let (i, (x, y)) =
            a.lines().zip(b.lines()).enumerate().find(|(_, (x, y))| x != y).unwrap_or((0, ("<length>", "<length>")));
        panic!(
            "restored database dumps differently at line {}: {x:?} vs {y:?} ({} vs {} lines)",
            i + 1,
            a.lines().count(),
            b.lines().count()
        );
    }
}

fn write_policy(f: &Fixture, body: &str) -> String {
    let p = f.dir.path().join("policy.toml");
    std::fs::write(&p, format!("[[repository]]\nname = \"primary\"\nurl = \"{}\"\n\n{body}", f.repo)).unwrap();
    p.display().to_string()
}

fn backup_job(f: &Fixture, policy: &str, job: &str, env: &[(&str, &str)]) -> Output {
    let mut c = bin();
    c.args(["--json", "backup", "--policy", policy, job, "--write-key", f.wk()]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn source_of(f: &Fixture, id: &str) -> serde_json::Value {
    let list: serde_json::Value =
        serde_json::from_str(&ok(&run(&["--json", "snapshots", "--repo", &f.repo, "--identity", f.id()]))).unwrap();
    list.as_array().unwrap().iter().find(|s| s["id"] == id).unwrap()["source"].clone()
}

const SCHEMA: &str = r#"
create type mood as enum ('sad', 'ok', 'happy');
create sequence invoice_no start 1000;
create table customers (id serial primary key, name text not null, email text unique, mood mood, tags text[],
  balance numeric(14,4), created timestamptz default now(), photo bytea, prefs jsonb, doc oid);
create table orders (id bigserial primary key, customer_id int references customers(id), total numeric,
  placed_at timestamptz, items jsonb, invoice int default nextval('invoice_no'), note text);
create index orders_placed on orders (placed_at);
create view big_orders as select o.id, c.name, o.total from orders o join customers c on c.id = o.customer_id where o.total > 500;
create function touch() returns trigger language plpgsql as $$ begin new.note := coalesce(new.note, 'touched'); return new; end $$;
create trigger orders_touch before insert on orders for each row execute function touch();
insert into customers (name, email, mood, tags, balance, created, photo, prefs)
  select 'customer ' || g, 'c' || g || '@example.com', (array['sad','ok','happy'])[1 + g % 3]::mood,
         array['t' || g % 5, 'x'], g * 1.2345, timestamptz '2026-01-01 00:00+02' + g * interval '37 minutes',
         decode(md5(g::text), 'hex'), jsonb_build_object('n', g, 'nested', jsonb_build_array(g, 'a'))
    from generate_series(1, 2000) g;
update customers set doc = lo_from_bytea(0, convert_to('large object for ' || id, 'UTF8')) where id <= 3;
insert into orders (customer_id, total, placed_at, items)
  select 1 + g % 2000, (g % 1000) + 0.99, timestamptz '2026-03-01 12:00+00' + g * interval '1 minute',
         jsonb_build_array(jsonb_build_object('sku', 'S' || g % 97, 'qty', g % 4))
    from generate_series(1, 20000) g;
"#;

#[test]
fn logical_roundtrip_many_types_matches_dump_and_fingerprint() {
    let f = Fixture::local();
    let db = new_db("lb_types");
    psql(&db, SCHEMA);
    let policy = write_policy(
        &f,
        &format!(
            "[[job]]\nname = \"orders-db\"\nkind = \"postgres\"\nurl = \"env:ORDERS_URL\"\nmode = \"logical\"\ndatabases = [\"{db}\"]\n"
        ),
    );
    let out = backup_job(&f, &policy, "orders-db", &[("ORDERS_URL", &url_for(&db))]);
    let js: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let id = js["id"].as_str().unwrap().to_string();
    assert!(!stderr(&out).contains("lifeboat-test"), "the password must never be printed");

    let target = format!("{db}_restored");
    let out = bin()
        .args(["restore", "--repo", &f.repo, "--identity", f.id(), &id, "--to", "env:TARGET_URL"])
        .env("TARGET_URL", url_for(&target))
        .output()
        .unwrap();
    ok(&out);
    assert_same_dump(&plain_dump(&db), &plain_dump(&target));
    assert_eq!(
        psql(&target, "select convert_from(lo_get(doc), 'UTF8') from customers where id = 2"),
        "large object for 2"
    );

    // Row counts match the fingerprint recorded in the snapshot.
    let src = source_of(&f, &id);
    assert_eq!(src["mode"], "logical");
    assert!(src["server_version"].as_str().unwrap().starts_with("15"));
    let tables = src["databases"][0]["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 2);
    for t in tables {
        let n: i64 = psql(
            &target,
            &format!("select count(*) from {}.{}", t["schema"].as_str().unwrap(), t["name"].as_str().unwrap()),
        )
        .parse()
        .unwrap();
        assert_eq!(Some(n), t["rows"].as_i64(), "{t}");
    }
    assert_eq!(tables.iter().find(|t| t["name"] == "orders").unwrap()["rows"], 20000);

    // The same snapshot can also be written out as a dump file.
    let file = f.dir.path().join("orders.dump");
    ok(&run(&[
        "restore",
        "--repo",
        &f.repo,
        "--identity",
        f.id(),
        &id,
        "--database",
        &db,
        "--to",
        file.to_str().unwrap(),
    ]));
    assert!(std::fs::read(&file).unwrap().starts_with(b"PGDMP"));

    // Target not empty: refused without --clean, replaced with it.
    let out = bin()
        .args(["restore", "--repo", &f.repo, "--identity", f.id(), &id, "--to", "env:T"])
        .env("T", url_for(&target))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is not empty") && stderr(&out).contains("--clean"), "{}", stderr(&out));
    psql(&target, "delete from orders where id > 10");
    let out = bin()
        .args(["restore", "--repo", &f.repo, "--identity", f.id(), &id, "--to", "env:T", "--clean", "--jobs", "2"])
        .env("T", url_for(&target))
        .output()
        .unwrap();
    ok(&out);
    assert_eq!(psql(&target, "select count(*) from orders"), "20000");
}

#[test]
fn dump_is_consistent_under_a_concurrent_writer() {
    let f = Fixture::local();
    let db = new_db("lb_consist");
    psql(
        &db,
        "create table ledger (txn int, leg int, amount numeric, pad text);
               insert into ledger select g / 10, g % 10, g, repeat(md5(g::text), 8) from generate_series(0, 299999) g;",
    );
    let url = url_for(&db);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let url = url.clone();
        std::thread::spawn(move || {
            // Each transaction writes 10 legs; a consistent dump sees all or none.
            let mut txn = 1_000_000;
            let mut sql = String::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sql.clear();
                sql.push_str("begin;");
                for leg in 0..10 {
                    sql.push_str(&format!("insert into ledger values ({txn}, {leg}, 1, 'w');"));
                }
                sql.push_str("commit;");
                let st = Command::new(format!("{}/psql", pg_bin()))
                    .args(["-X", "-q", "-d", &url, "-c", &sql])
                    .output()
                    .unwrap();
                assert!(st.status.success());
                txn += 1;
            }
            txn - 1_000_000
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let policy = write_policy(
        &f,
        &format!("[[job]]\nname = \"ledger\"\nkind = \"postgres\"\nurl = \"env:L\"\ndatabases = [\"{db}\"]\n"),
    );
    let out = backup_job(&f, &policy, "ledger", &[("L", &url)]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    let js: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let id = js["id"].as_str().unwrap();
    assert!(written > 2, "the writer must overlap the dump (wrote {written} transactions)");

    let target = format!("{db}_r");
    ok(&bin()
        .args(["restore", "--repo", &f.repo, "--identity", f.id(), id, "--to", "env:T"])
        .env("T", url_for(&target))
        .output()
        .unwrap());
    let torn = psql(&target, "select count(*) from (select txn from ledger group by txn having count(*) <> 10) t");
    assert_eq!(torn, "0", "a transaction was dumped half");
    let restored: i64 = psql(&target, "select count(*) from ledger").parse().unwrap();
    let fp = source_of(&f, id)["databases"][0]["tables"][0]["rows"].as_i64().unwrap();
    assert_eq!(restored, fp, "fingerprint row count differs from the restored table");
    assert!(restored >= 300000);
}

#[test]
fn bad_input_wrong_password_missing_database_old_pg_dump() {
    let f = Fixture::local();
    let policy = write_policy(&f, "[[job]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"env:U\"\n");
    let before = tree_state(&f.repo_path());

    let bad = pg_url().replace("lifeboat-test", "wrong-password");
    let out = backup_job(&f, &policy, "db", &[("U", &bad)]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains("rejected the password for user \"postgres\""), "{e}");
    assert!(!e.contains("wrong-password"), "password leaked: {e}");

    let out = backup_job(&f, &policy, "db", &[("U", &url_for("no_such_db"))]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("database \"no_such_db\" does not exist"), "{}", stderr(&out));

    // A pg_dump older than the server: the message names both versions and the fix.
    let fake = f.dir.path().join("oldbin");
    std::fs::create_dir_all(&fake).unwrap();
    for tool in ["pg_dump", "pg_dumpall"] {
        let p = fake.join(tool);
        std::fs::write(&p, "#!/bin/sh\necho 'pg_dump (PostgreSQL) 14.9'\n").unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let policy = write_policy(
        &f,
        &format!("[[job]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"env:U\"\npg_bin = \"{}\"\n", fake.display()),
    );
    let out = backup_job(&f, &policy, "db", &[("U", &pg_url())]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("pg_dump 14.9 is older than the server (PostgreSQL 15") && e.contains("postgresql-client-15"),
        "{e}"
    );

    // Nothing failed into the repository.
    assert_eq!(before, tree_state(&f.repo_path()));
}

/// The benchmarks' dataset (scripts/gen-dataset) loads into the PostgreSQL 15
/// the tests and benches run, as is: every COPY row arrives.
#[test]
fn gen_dataset_loads_into_postgres_15() {
    let f = Fixture::local();
    let dump = f.dir.path().join("gen.sql");
    let made = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gen-dataset"))
        .args([dump.to_str().unwrap(), "--size-mib", "3", "--seed", "7"])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let text = std::fs::read_to_string(&dump).unwrap();
    // Rows per table, counted from the COPY blocks of the file itself.
    let mut expected = std::collections::BTreeMap::new();
    let mut table: Option<String> = None;
    for line in text.lines() {
        match &table {
            None if line.starts_with("COPY public.") => {
                table = Some(line["COPY public.".len()..].split(' ').next().unwrap().to_string());
            }
            Some(t) if line == "\\." => {
                assert!(expected.contains_key(t), "empty COPY block for {t}");
                table = None;
            }
            Some(t) => *expected.entry(t.clone()).or_insert(0u64) += 1,
            None => {}
        }
    }
    assert_eq!(expected.keys().collect::<Vec<_>>(), ["customers", "events", "orders"]);

    psql("postgres", "do $$ begin create role app; exception when duplicate_object then null; end $$");
    let db = new_db("gen");
    let out = Command::new(format!("{}/psql", pg_bin()))
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &url_for(&db), "-f", dump.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "the dataset does not load: {}", String::from_utf8_lossy(&out.stderr));
    for (t, n) in &expected {
        assert_eq!(psql(&db, &format!("select count(*) from {t}")), n.to_string(), "rows of {t}");
    }
    psql("postgres", &format!("drop database {db}"));
}

#[test]
fn wal_push_is_idempotent_and_refuses_a_different_segment() {
    let f = Fixture::local();
    let seg = f.dir.path().join("000000010000000000000007");
    std::fs::write(&seg, random_bytes(1, 1 << 20)).unwrap();
    let push = |p: &Path| {
        run(&["wal", "push", p.to_str().unwrap(), "--repo", &f.repo, "--write-key", f.wk(), "--archive", "db"])
    };
    ok(&push(&seg));
    let out = push(&seg);
    ok(&out);
    assert!(stderr(&out).contains("already archived"));
    let other = f.dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let seg2 = other.join("000000010000000000000007");
    std::fs::write(&seg2, random_bytes(2, 1 << 20)).unwrap();
    let out = push(&seg2);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("a different 000000010000000000000007 is already archived"), "{}", stderr(&out));
    // Fetch returns the original bytes; history files work too; bad names are refused.
    let dest = f.dir.path().join("fetched");
    ok(&run(&[
        "wal",
        "fetch",
        "000000010000000000000007",
        dest.to_str().unwrap(),
        "--repo",
        &f.repo,
        "--identity",
        f.id(),
        "--archive",
        "db",
    ]));
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&seg).unwrap());
    let hist = f.dir.path().join("00000002.history");
    std::fs::write(&hist, "1\t0/3000000\tno recovery target specified\n").unwrap();
    ok(&push(&hist));
    let bad = f.dir.path().join("passwd");
    std::fs::write(&bad, "x").unwrap();
    assert_eq!(push(&bad).status.code(), Some(1));
    let out = run(&[
        "wal",
        "fetch",
        "000000010000000000000099",
        dest.to_str().unwrap(),
        "--repo",
        &f.repo,
        "--identity",
        f.id(),
        "--archive",
        "db",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("000000010000000000000099 is not in the archive"));
}

// ---- physical + WAL + PITR, on a cluster of its own with archive_command ----

struct Cluster {
    dir: std::path::PathBuf,
    port: u16,
}

fn as_postgres(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", "env"]);
    for (k, v) in env {
        c.arg(format!("{k}={v}"));
    }
    c.args(args).output().unwrap()
}

fn chown_postgres(p: &Path) {
    assert!(Command::new("chown").args(["-R", "postgres:postgres"]).arg(p).status().unwrap().success());
}

impl Cluster {
    fn psql(&self, sql: &str) -> String {
        let out = Command::new(format!("{}/psql", pg_bin()))
            .args([
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
    /// Wait (up to 30 s) until the archiver has pushed `segment`; no archive_command may have failed.
    fn wait_archived(&self, segment: &str, log: &Path) {
        for _ in 0..150 {
            if self.psql("select coalesce(last_archived_wal, '') from pg_stat_archiver").as_str() >= segment {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(
            self.psql("select failed_count from pg_stat_archiver"),
            "0",
            "archive_command failed: see {}",
            log.display()
        );
    }
    fn stop(&self) {
        let _ = as_postgres(
            &[&format!("{}/pg_ctl", pg_bin()), "-D", self.dir.to_str().unwrap(), "-m", "fast", "-w", "stop"],
            &[],
        );
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The lifeboat binary where the postgres user can run it: a copy in the
/// fixture dir, because the build dir may sit below a private (0700) checkout.
fn exe_for_postgres(f: &Fixture) -> String {
    let dst = f.dir.path().join("lifeboat");
    if !dst.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_lifeboat"), &dst).unwrap();
        std::fs::set_permissions(&dst, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    dst.display().to_string()
}

/// A PostgreSQL cluster of the test's own (run as the postgres user, trust
/// authentication, on a free port of 127.0.0.1) with `conf` appended to its
/// postgresql.conf and, if given, `hba` as its pg_hba.conf.
fn own_cluster(f: &Fixture, conf: &str, hba: Option<&str>) -> (Cluster, std::path::PathBuf) {
    std::fs::set_permissions(f.dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    chown_postgres(f.dir.path());
    let data = f.dir.path().join("data");
    let port = free_port();
    let out = as_postgres(
        &[&format!("{}/initdb", pg_bin()), "-D", data.to_str().unwrap(), "--auth=trust", "-U", "postgres"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut c = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
    c.push_str(&format!(
        "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n{conf}",
        f.dir.path().display()
    ));
    std::fs::write(data.join("postgresql.conf"), c).unwrap();
    if let Some(hba) = hba {
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
    }
    let log = f.dir.path().join("pg.log");
    let out = as_postgres(
        &[&format!("{}/pg_ctl", pg_bin()), "-D", data.to_str().unwrap(), "-l", log.to_str().unwrap(), "-w", "start"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    (Cluster { dir: data, port }, log)
}

/// A cluster of the test's own whose archive_command pushes WAL to the
/// fixture's repository under `archive`.
fn archiving_cluster(f: &Fixture, archive: &str) -> (Cluster, std::path::PathBuf) {
    let exe = exe_for_postgres(f);
    let archive_cmd =
        format!("LIFEBOAT_WRITE_KEY_FILE={} {exe} wal push --repo {} --archive {archive} %p", f.wk(), f.repo);
    own_cluster(
        f,
        &format!("wal_level = replica\narchive_mode = on\narchive_command = '{archive_cmd}'\nmax_wal_senders = 4\n"),
        None,
    )
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `lifeboat restore SNAPSHOT --to-dir DIR --start` (plus `extra`) as the
/// postgres user, on a free port; the restored cluster is running.
fn restore_and_start(f: &Fixture, exe: &str, snapshot: &str, dir: &str, extra: &[&str]) -> Cluster {
    let dir = f.dir.path().join(dir);
    let port = free_port();
    let port_s = port.to_string();
    let mut args =
        vec![exe, "restore", "--repo", &f.repo, "--identity", f.id(), snapshot, "--to-dir", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--start", "--port", &port_s, "--wait", "120"]);
    ok(&as_postgres(&args, &[]));
    Cluster { dir, port }
}

#[test]
fn physical_backup_wal_archive_and_point_in_time_restore() {
    let f = Fixture::local();
    let exe_path = exe_for_postgres(&f);
    let exe = exe_path.as_str();
    let (primary, log) = archiving_cluster(&f, "pitr");

    primary.psql("create table markers (id int primary key, at timestamptz default clock_timestamp())");
    let policy = write_policy(
        &f,
        "[[job]]\nname = \"pitr\"\nkind = \"postgres\"\nmode = \"physical\"\nurl = \"env:PITR_URL\"\nwal_archiving = true\nrpo = \"15m\"\n",
    );
    chown_postgres(f.dir.path());
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", primary.port);
    let out = as_postgres(
        &[exe, "--json", "backup", "--policy", &policy, "pitr", "--write-key", f.wk()],
        &[("PITR_URL", &url)],
    );
    let js: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    let base = js["id"].as_str().unwrap().to_string();

    // Markers at known times, each followed by a WAL switch (so it is archived).
    let mut times = Vec::new();
    let mut last_segment = String::new();
    for i in 1..=5 {
        std::thread::sleep(Duration::from_millis(1100));
        let t = primary.psql(&format!("insert into markers (id) values ({i}) returning to_char(at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"));
        times.push(chrono::DateTime::parse_from_rfc3339(&t).unwrap().with_timezone(&chrono::Utc));
        // pg_walfile_name of the switch point is the segment just completed.
        last_segment = primary.psql("select pg_walfile_name(pg_switch_wal())");
    }
    primary.wait_archived(&last_segment, &log);

    // status: newest recoverable point comes from the WAL archive.
    let st = ok(&as_postgres(&[exe, "--json", "status", "--policy", &policy, "--identity", f.id()], &[]));
    let st: serde_json::Value = serde_json::from_str(&st).unwrap();
    let newest = chrono::DateTime::parse_from_rfc3339(st[0]["newest_recoverable_point"].as_str().unwrap()).unwrap();
    assert!(newest >= times[3], "status: newest recoverable {newest} is older than marker 4 ({})", times[3]);

    // PITR between marker 3 and 4: exactly markers 1..3.
    let between = times[2] + (times[3] - times[2]) / 2;
    let restored = restore_and_start(&f, exe, &base, "pitr-data", &["--at", &between.to_rfc3339()]);
    let ids = restored.psql("select string_agg(id::text, ',' order by id) from markers");
    restored.stop();
    assert_eq!(ids, "1,2,3", "markers after the target time must not be there");

    // Without --at: every marker.
    let dir3 = f.dir.path().join("latest-data");
    let p3 = free_port();
    // A relative --repo (run from the fixture dir) must still reach the WAL archive from restore_command.
    let mut c = Command::new("runuser");
    c.current_dir(f.dir.path()).args([
        "-u",
        "postgres",
        "--",
        exe,
        "restore",
        "--repo",
        "repo",
        "--identity",
        f.id(),
        &base,
        "--to-dir",
        dir3.to_str().unwrap(),
        "--start",
        "--port",
        &p3.to_string(),
        "--wait",
        "120",
    ]);
    ok(&c.output().unwrap());
    let restored = Cluster { dir: dir3, port: p3 };
    let ids = restored.psql("select string_agg(id::text, ',' order by id) from markers");
    restored.stop();
    assert_eq!(ids, "1,2,3,4,5");

    // A segment missing in the middle: the restore names it and the last reachable time.
    let wal_dir = f.repo_path().join("wal/pitr");
    let mut segs: Vec<String> = std::fs::read_dir(&wal_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.len() == 24)
        .collect();
    segs.sort();
    assert!(segs.len() >= 5, "{segs:?}");
    let victim = segs[segs.len() - 3].clone();
    std::fs::remove_file(wal_dir.join(&victim)).unwrap();
    let dir4 = f.dir.path().join("gap-data");
    let out = as_postgres(
        &[exe, "restore", "--repo", &f.repo, "--identity", f.id(), &base, "--to-dir", dir4.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains(&format!("WAL segment {victim} is missing")) && e.contains("recovery can only reach"), "{e}");
    assert!(!dir4.exists(), "nothing is laid out when the archive has a hole");
}

#[test]
fn database_loss_drill_recovers_base_backup_plus_wal_to_now() {
    let f = Fixture::local();
    let exe_path = exe_for_postgres(&f);
    let exe = exe_path.as_str();
    let (primary, log) = archiving_cluster(&f, "orders-physical");
    primary.psql("create table orders (id int primary key, at timestamptz default clock_timestamp())");
    let policy = write_policy(
        &f,
        r#"[[job]]
name = "orders-physical"
kind = "postgres"
mode = "physical"
url = "env:PITR_URL"
wal_archiving = true
schedule = "30 1 * * *"
rpo = "15m"
rto = "15m"
[[job.verify.assert]]
sql = "select count(*) from orders"
expect = "= 50"

[[scenario]]
name = "database-loss"
kind = "database-loss"
jobs = ["orders-physical"]
runbook = "runbooks/database-failure.md"
"#,
    );
    chown_postgres(f.dir.path());
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", primary.port);
    ok(&as_postgres(
        &[exe, "backup", "--policy", &policy, "orders-physical", "--write-key", f.wk()],
        &[("PITR_URL", &url)],
    ));
    // Rows written after the base backup exist only in the WAL archive.
    primary.psql("insert into orders (id) select generate_series(1, 50)");
    let last = primary.psql("select pg_walfile_name(pg_switch_wal())");
    primary.wait_archived(&last, &log);

    let out = as_postgres(
        &[exe, "--json", "drill", "--policy", &policy, "--identity", f.id(), "--scenario", "database-loss"],
        &[],
    );
    let d: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert!(out.status.success(), "{d:#}\n{}", stderr(&out));
    let j = &d[0]["jobs"][0];
    assert_eq!(j["verified"], true, "{j:#}");
    let checks = j["checks"].as_array().unwrap();
    assert!(checks.iter().any(|c| c["name"] == "recovery" && c["ok"] == true), "{j:#}");
    // The assertion sees the 50 rows: recovery replayed the WAL archive up to now.
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "assertion" && c["ok"] == true && c["detail"].as_str().unwrap().contains("→ 50")),
        "{j:#}"
    );
    let rpo = j["rpo_secs"].as_f64().unwrap();
    assert!(rpo < 120.0, "the newest archived WAL is seconds old, RPO {rpo}");
    assert_eq!(j["rpo_ok"], true);
    assert_eq!(j["rto_ok"], true);

    // verify as root is refused with what to do instead.
    let out = bin().args(["verify", "--policy", &policy, "orders-physical", "--identity", f.id()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("runuser -u postgres -- lifeboat verify"), "{}", stdout(&out));
}

/// Updates spread over a table touch a fraction of its pages but every
/// megabyte of its file: the second base backup must store only the changed
/// pages (page-cut data files, the default in a format 2 repository), not a
/// new copy of the table.
#[test]
fn physical_second_backup_stores_only_changed_pages() {
    let f = Fixture::local();
    let exe_path = exe_for_postgres(&f);
    let exe = exe_path.as_str();
    let (primary, _log) = archiving_cluster(&f, "pages");
    // ~50 MB of heap that does not compress to nothing (md5 text).
    primary.psql(
        "create table t (id int primary key, v text, pad text);
         insert into t select i, md5(i::text), repeat(md5((i * 7)::text), 3) from generate_series(1, 300000) i",
    );
    primary.psql("vacuum (freeze, analyze) t");
    primary.psql("checkpoint");
    let table_bytes: u64 = primary.psql("select pg_table_size('t')").parse().unwrap();
    assert!(table_bytes > 40 << 20, "{table_bytes}");
    let policy = write_policy(
        &f,
        "[[job]]\nname = \"pages\"\nkind = \"postgres\"\nmode = \"physical\"\nurl = \"env:PAGES_URL\"\nwal_archiving = true\n",
    );
    chown_postgres(f.dir.path());
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", primary.port);
    let backup = || {
        let out = as_postgres(
            &[exe, "--json", "backup", "--policy", &policy, "pages", "--write-key", f.wk()],
            &[("PAGES_URL", &url)],
        );
        let js: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
        (js["id"].as_str().unwrap().to_string(), js["stats"].clone())
    };
    let (_, first) = backup();
    // Every 200th row: about a fifth of the heap pages and every index leaf change.
    primary.psql("update t set v = v || 'x' where id % 200 = 0");
    primary.psql("checkpoint");
    let (second, stats) = backup();
    let new_raw = stats["bytes_new_raw"].as_u64().unwrap();
    let read = stats["bytes_read"].as_u64().unwrap();
    assert!(first["bytes_read"].as_u64().unwrap() > table_bytes);
    // Content-defined 1 MiB chunks store the whole table again (~table_bytes
    // + WAL); pages store ~22 % of the heap, the index and the WAL.
    assert!(
        new_raw < table_bytes / 2 && new_raw < read / 2,
        "second base backup stored {new_raw} new bytes of {read} read (table {table_bytes})"
    );

    // WAL retention: once the first base backup is forgotten, prune deletes
    // the WAL only it could replay and keeps everything from the second's
    // start on (the restore below replays from there).
    let start = source_of(&f, &second)["start_segment"].as_str().unwrap().to_string();
    let wal_dir = f.repo_path().join("wal/pages");
    let archived = || {
        let mut names: Vec<String> =
            std::fs::read_dir(&wal_dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into()).collect();
        names.sort();
        names
    };
    let before = archived();
    let older: Vec<&String> = before.iter().filter(|n| n.len() >= 24 && n[8..24] < start[8..24]).collect();
    assert!(!older.is_empty() && before.contains(&start), "start {start}, archived {before:?}");
    let keep_one = write_policy(
        &f,
        "[[job]]\nname = \"pages\"\nkind = \"postgres\"\nmode = \"physical\"\nurl = \"env:PAGES_URL\"\nretention = { keep-last = 1 }\n",
    );
    ok(&run(&["forget", "--policy", &keep_one, "pages", "--write-key", f.wk()]));
    let prune = |dry: bool| {
        let mut args = vec!["--json", "prune", "--repo", &f.repo, "--identity", f.id()];
        if dry {
            args.push("--dry-run");
        }
        serde_json::from_str::<serde_json::Value>(&ok(&run(&args))).unwrap()
    };
    let dry = prune(true);
    assert_eq!(dry["wal_files_deleted"].as_u64(), Some(older.len() as u64), "{dry:#}");
    assert_eq!(archived(), before, "a dry run deletes nothing");
    let done = prune(false);
    assert_eq!(done["wal_files_deleted"].as_u64(), Some(older.len() as u64), "{done:#}");
    let after = archived();
    let expected: Vec<String> = before.iter().filter(|n| !older.contains(n)).cloned().collect();
    assert_eq!(after, expected, "exactly the WAL before {start} goes");
    chown_postgres(f.dir.path());

    // The page-cut snapshot restores and holds the updated rows.
    let restored = restore_and_start(&f, exe, &second, "pages-data", &[]);
    let got = restored.psql("select count(*), count(*) filter (where v like '%x'), sum(hashtext(v || pad)) from t");
    restored.stop();
    assert_eq!(
        got,
        primary.psql("select count(*), count(*) filter (where v like '%x'), sum(hashtext(v || pad)) from t")
    );
    assert!(got.starts_with("300000|1500|"), "{got}");
}

/// TLS to PostgreSQL: a server that rejects every unencrypted connection,
/// whose certificate names `localhost` only. Backups and restores (the
/// lifeboat connection and pg_dump/pg_restore alike) work with the modes
/// that should pass and fail clearly, with nothing written, with the ones
/// that should not.
#[test]
fn tls_to_postgres_is_verified_as_the_url_says_for_every_connection() {
    let f = Fixture::local();
    let certs = f.dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    make_ca(&certs, "ca");
    make_ca(&certs, "rogue");
    make_leaf(
        &certs,
        "ca",
        "server",
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    );
    std::fs::set_permissions(certs.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let (server, _log) = own_cluster(
        &f,
        &format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            certs.join("server.crt").display(),
            certs.join("server.key").display()
        ),
        Some("local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n"),
    );
    let port = server.port;
    server.psql("create table t (id int primary key, v text); insert into t select i, md5(i::text) from generate_series(1, 1234) i");

    let policy = write_policy(&f, "[[job]]\nname = \"tls\"\nkind = \"postgres\"\nurl = \"env:U\"\n");
    let ca = certs.join("ca.crt").display().to_string();
    let rogue = certs.join("rogue.crt").display().to_string();
    let url = |host: &str, q: &str| format!("postgres://postgres@{host}:{port}/postgres?{q}");
    let rows_in = |id: &str| {
        let src = source_of(&f, id);
        let t = src["databases"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|d| d["tables"].as_array().unwrap().iter())
            .find(|t| t["name"] == "t")
            .cloned()
            .unwrap_or_else(|| panic!("{src:#}"));
        t["rows"].as_i64().unwrap()
    };
    let backup = |u: &str| {
        let out = backup_job(&f, &policy, "tls", &[("U", u)]);
        serde_json::from_str::<serde_json::Value>(&ok(&out)).unwrap()["id"].as_str().unwrap().to_string()
    };

    // Chain checked, name not (the certificate names localhost, we dial 127.0.0.1).
    let id = backup(&url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={ca}")));
    assert_eq!(rows_in(&id), 1234);
    // Chain and name checked.
    let id2 = backup(&url("localhost", &format!("sslmode=verify-full&sslrootcert={ca}")));
    assert_eq!(rows_in(&id2), 1234);
    // Encrypted, nothing checked (libpq's require).
    backup(&url("127.0.0.1", "sslmode=require"));

    // The ones that must fail, each with what to do, and nothing written.
    let before = tree_state(&f.repo_path());
    for (u, expect) in [
        (url("127.0.0.1", &format!("sslmode=verify-full&sslrootcert={ca}")), "use sslmode=verify-ca"),
        (url("127.0.0.1", &format!("sslmode=verify-ca&sslrootcert={rogue}")), "sslrootcert=FILE"),
        (url("localhost", "sslmode=verify-full"), "sslrootcert=FILE"),
        (url("127.0.0.1", "sslmode=disable"), "no encryption"),
        (url("127.0.0.1", "sslmode=sometimes"), "invalid sslmode \"sometimes\""),
    ] {
        let out = backup_job(&f, &policy, "tls", &[("U", &u)]);
        assert_eq!(out.status.code(), Some(1), "{u}: {}", stderr(&out));
        assert!(stderr(&out).contains(expect), "{u}: {}", stderr(&out));
    }
    assert_eq!(before, tree_state(&f.repo_path()), "a refused connection wrote nothing");

    // Restore over TLS too: lifeboat creates the database, pg_restore fills it.
    let out = bin()
        .args(["restore", "--repo", &f.repo, "--identity", f.id(), &id, "--database", "postgres", "--to", "env:T"])
        .env("T", format!("postgres://postgres@127.0.0.1:{port}/copy?sslmode=verify-ca&sslrootcert={ca}"))
        .output()
        .unwrap();
    ok(&out);
    let copied = Command::new(format!("{}/psql", pg_bin()))
        .args(["-X", "-t", "-A", "-h", f.dir.path().to_str().unwrap(), "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "copy", "-c", "select count(*), sum(hashtext(v)) from t"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&copied.stdout).trim(),
        server.psql("select count(*), sum(hashtext(v)) from t"),
        "{}",
        String::from_utf8_lossy(&copied.stderr)
    );
}
