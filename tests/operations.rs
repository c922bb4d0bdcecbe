//! Operations: run (backup + replicate + retention + alerts), replication
//! across regions, resumable replication, prune under concurrent backups,
//! policy lints, metrics and webhooks.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn policy_file(dir: &std::path::Path, body: &str) -> String {
    let p = dir.join(format!("policy-{}.toml", hex::encode(rand::random::<[u8; 3]>())));
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[test]
fn run_replicates_to_two_s3_regions_and_a_local_dir() {
    let f = Fixture::s3();
    let east = new_bucket("us-east-2");
    let west = new_bucket("eu-west-1");
    let local = f.dir.path().join("replica-local");
    let data_dir = f.dir.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("a.bin"), mixed_data(4, 5 << 20)).unwrap();
    let (sink, rx) = http_sink();
    let policy = policy_file(
        f.dir.path(),
        &format!(
            r#"[[repository]]
name = "primary"
url = "{primary}"
region = "us-east-1"

[[repository]]
name = "east"
url = "{east}"

[[repository]]
name = "west"
url = "{west}"

[[repository]]
name = "local"
url = "{local}"
region = "on-prem"

[alerts]
pushgateway = "{sink}"

[[job]]
name = "files"
kind = "command"
command = "tar -C {data} -c ."
retention = {{ keep-last = 5 }}
"#,
            primary = f.repo,
            east = s3_url(&east, "us-east-2", "lb"),
            west = s3_url(&west, "eu-west-1", "lb"),
            local = local.display(),
            data = data_dir.display()
        ),
    );
    let out = run(&["--json", "run", "--policy", &policy, "files", "--write-key", f.wk()]);
    let js: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(js["ok"], true, "{js}");
    let steps: Vec<&str> = js["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["backup", "replicate east", "replicate west", "replicate local", "retention"]);

    // The same snapshot restores from every replica, byte for byte.
    let want = ok(&run(&["--json", "snapshots", "--repo", &f.repo, "--identity", f.id()]));
    let id = serde_json::from_str::<serde_json::Value>(&want).unwrap()[0]["id"].as_str().unwrap().to_string();
    let primary_bytes = f.restore(&id);
    for url in [s3_url(&east, "us-east-2", "lb"), s3_url(&west, "eu-west-1", "lb"), local.display().to_string()] {
        let out = run(&["restore", "--repo", &url, "--identity", f.id(), &id, "--to", "-"]);
        ok(&out);
        assert!(out.stdout == primary_bytes, "replica {url} restores different bytes");
        ok(&run(&["check", "--repo", &url, "--identity", f.id(), "--read-data"]));
    }

    // Metrics were pushed and parse as Prometheus text.
    let (method, path, body) = rx.recv_timeout(Duration::from_secs(5)).expect("pushgateway got nothing");
    assert_eq!((method.as_str(), path.as_str()), ("PUT", "/metrics/job/lifeboat/instance/files"));
    let lines: Vec<Result<String, std::io::Error>> = body.lines().map(|l| Ok(l.to_string())).collect();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter()).expect("valid Prometheus text");
    let names: Vec<&str> = scrape.samples.iter().map(|s| s.metric.as_str()).collect();
    for m in [
        "lifeboat_last_success_timestamp_seconds",
        "lifeboat_last_run_bytes_read",
        "lifeboat_replication_lag_seconds",
        "lifeboat_last_run_dedup_ratio",
    ] {
        assert!(names.contains(&m), "{m} missing from {names:?}");
    }
    let regions: Vec<String> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "lifeboat_replication_lag_seconds")
        .map(|s| s.labels.get("region").unwrap().to_string())
        .collect();
    assert_eq!(regions.len(), 3, "{regions:?}");

    // status: every region has the snapshot, no lag.
    let st: serde_json::Value =
        serde_json::from_str(&ok(&run(&["--json", "status", "--policy", &policy, "--write-key", f.wk()]))).unwrap();
    for r in st[0]["regions"].as_array().unwrap() {
        assert_eq!(r["newest_snapshot"].as_str(), Some(id.as_str()), "{r}");
        assert_eq!(r["replication_lag_secs"], 0, "{r}");
    }
}

#[test]
fn failed_run_says_which_step_and_calls_the_webhook() {
    let f = Fixture::local();
    let (sink, rx) = http_sink();
    let policy = policy_file(
        f.dir.path(),
        &format!(
            "[[repository]]\nname = \"p\"\nurl = \"{}\"\n\n[alerts]\nwebhook = \"env:HOOK\"\n\n[[job]]\nname = \"nightly-files\"\nkind = \"command\"\ncommand = \"echo oops >&2; exit 7\"\n",
            f.repo
        ),
    );
    let out = bin()
        .args(["run", "--policy", &policy, "nightly-files", "--write-key", f.wk()])
        .env("HOOK", format!("{sink}/hooks/slack"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("run nightly-files: backup failed"), "{}", stderr(&out));
    let (method, path, body) = rx.recv_timeout(Duration::from_secs(5)).expect("webhook not called");
    assert_eq!((method.as_str(), path.as_str()), ("POST", "/hooks/slack"));
    let alert: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(alert["job"], "nightly-files");
    assert!(alert["reason"].as_str().unwrap().contains("status 7"), "{alert}");
    assert!(alert["text"].as_str().unwrap().contains("nightly-files"));
}

#[test]
fn interrupted_replication_resumes_without_recopying() {
    let f = Fixture::local();
    // Small packs so there are many objects to copy.
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").display().to_string();
    let wk = dir.path().join("w.key");
    ok(&run(&[
        "init",
        "--repo",
        &repo,
        "--recipient",
        &f.recipient,
        "--write-key-out",
        wk.to_str().unwrap(),
        "--pack-size",
        "1M",
        "--chunk-size",
        "64K",
    ]));
    let data = random_bytes(77, 60 << 20);
    ok(&run_stdin(
        &["backup", "--repo", &repo, "--write-key", wk.to_str().unwrap(), "--stdin", "--name", "big"],
        &data,
    ));
    let replica = dir.path().join("replica");
    let policy = policy_file(
        dir.path(),
        &format!(
            "[[repository]]\nname = \"p\"\nurl = \"{repo}\"\n\n[[repository]]\nname = \"r\"\nurl = \"{}\"\nregion = \"elsewhere\"\n",
            replica.display()
        ),
    );
    let total_packs = std::fs::read_dir(format!("{repo}/packs"))
        .unwrap()
        .flatten()
        .map(|d| std::fs::read_dir(d.path()).unwrap().count())
        .sum::<usize>();
    assert!(total_packs >= 40, "{total_packs}");

    // Kill it once some packs have landed.
    let mut child =
        bin().args(["replicate", "--policy", &policy]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = || {
        std::fs::read_dir(replica.join("packs"))
            .map(|d| d.flatten().map(|s| std::fs::read_dir(s.path()).map(|x| x.count()).unwrap_or(0)).sum::<usize>())
            .unwrap_or(0)
    };
    while count() < 5 {
        assert!(Instant::now() < deadline, "replication did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Objects, not staging files a killed writer may leave in .tmp/.
    let objects = |d: &std::path::Path| {
        tree_state(d).into_iter().filter(|(k, _, _)| !k.starts_with(".tmp") && !k.starts_with("locks")).count()
    };
    let copied_before = objects(&replica);
    assert!(count() < total_packs, "replication finished before it could be interrupted");
    let snaps = replica.join("snapshots");
    assert!(!snaps.exists() || std::fs::read_dir(&snaps).unwrap().count() == 0, "a manifest arrived before its data");

    // Counted before the run: each run then adds its own replication record to the primary.
    let total = objects(std::path::Path::new(&repo));
    let out = ok(&run(&["--json", "replicate", "--policy", &policy]));
    let rep: serde_json::Value = serde_json::from_str(&out).unwrap();
    let copied_now = rep[0]["report"]["objects_copied"].as_u64().unwrap() as usize;
    assert_eq!(
        copied_before + copied_now,
        total,
        "only the missing objects are copied (before {copied_before}, now {copied_now}, total {total})"
    );
    let again: serde_json::Value =
        serde_json::from_str(&ok(&run(&["--json", "replicate", "--policy", &policy]))).unwrap();
    assert_eq!(again[0]["report"]["objects_copied"], 1, "only the previous run's replication record is new");
    let out = run(&["restore", "--repo", replica.to_str().unwrap(), "--identity", f.id(), "latest", "--to", "-"]);
    ok(&out);
    assert!(out.stdout == data);
}

#[test]
fn prune_and_backups_at_the_same_time() {
    let f = Fixture::local();
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    for round in 0..4u64 {
        // An old snapshot to forget, so prune has something to delete.
        let old = mixed_data(1000 + round, 3 << 20);
        let old_id = f.backup("scratch", &old);
        let rm = std::fs::remove_file(f.repo_path().join("snapshots").join(&old_id));
        rm.unwrap();
        let data = mixed_data(round, 6 << 20);
        let mut backup = bin()
            .args(["backup", "--repo", &f.repo, "--write-key", f.wk(), "--stdin", "--name", "live"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = backup.stdin.take().unwrap();
        let d = data.clone();
        // A write error means the backup exited early: its own stderr (checked by `ok` below) says why.
        let feeder = std::thread::spawn(move || -> std::io::Result<()> {
            for c in d.chunks(1 << 20) {
                stdin.write_all(c)?;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(())
        });
        let prune = run(&["prune", "--repo", &f.repo, "--identity", f.id(), "--grace", "0s"]);
        let fed = feeder.join().unwrap();
        let out = backup.wait_with_output().unwrap();
        let id = ok(&out).trim().to_string();
        fed.unwrap();
        // Prune either ran (before/after the backup's lock) or stepped aside; never half.
        if !prune.status.success() {
            assert!(stderr(&prune).contains("backup(s) are running"), "{}", stderr(&prune));
        }
        kept.push((id, data));
        ok(&run(&["prune", "--repo", &f.repo, "--identity", f.id(), "--grace", "0s"]));
    }
    let out = ok(&run(&["check", "--repo", &f.repo, "--identity", f.id(), "--read-data"]));
    assert!(out.contains("no errors") && !out.contains("not referenced"), "{out}");
    for (id, data) in &kept {
        assert!(f.restore(id) == *data, "snapshot {id} does not restore after prune");
    }
    // Prune really deleted the forgotten data.
    let r: serde_json::Value =
        serde_json::from_str(&ok(&run(&["--json", "prune", "--repo", &f.repo, "--identity", f.id(), "--dry-run"])))
            .unwrap();
    assert_eq!(r["packs_deleted"], 0);
}

#[test]
fn forget_applies_retention_and_explains() {
    let f = Fixture::local();
    for i in 0..4 {
        f.backup("job-a", format!("data {i}").as_bytes());
    }
    let policy = policy_file(
        f.dir.path(),
        &format!(
            "[[repository]]\nname = \"p\"\nurl = \"{}\"\n\n[[job]]\nname = \"job-a\"\nkind = \"command\"\ncommand = \"true\"\nretention = {{ keep-last = 2 }}\n",
            f.repo
        ),
    );
    let dry: serde_json::Value =
        serde_json::from_str(&ok(&run(&["--json", "forget", "--policy", &policy, "--dry-run", "--write-key", f.wk()])))
            .unwrap();
    let decisions = dry[0]["decisions"].as_array().unwrap();
    assert_eq!(decisions.iter().filter(|d| d["keep"] == true).count(), 2);
    assert!(decisions[0]["reasons"].as_array().unwrap().iter().any(|r| r.as_str().unwrap().contains("last")));
    assert_eq!(dry[0]["removed"].as_array().unwrap().len(), 0);
    let ids_before = std::fs::read_dir(f.repo_path().join("snapshots")).unwrap().count();
    assert_eq!(ids_before, 4);
    ok(&run(&["forget", "--policy", &policy, "--write-key", f.wk()]));
    assert_eq!(std::fs::read_dir(f.repo_path().join("snapshots")).unwrap().count(), 2);
}

fn lint(body: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = policy_file(dir.path(), body);
    let out = run(&["policy", "check", &p]);
    (out.status.code().unwrap(), stdout(&out) + &stderr(&out))
}

const TWO_REGIONS: &str = "[[repository]]\nname = \"a\"\nurl = \"s3://bkt-1/x?region=us-west-2\"\n\n[[repository]]\nname = \"b\"\nurl = \"s3://bkt-2/x?region=us-east-1\"\n\n[[scenario]]\nname = \"region-loss\"\nkind = \"region-loss\"\n\n";

#[test]
fn policy_lints_each_problem_with_a_position() {
    // A clean policy passes.
    let (code, out) = lint(&format!(
        "{TWO_REGIONS}[[job]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"env:X\"\nschedule = \"*/10 * * * *\"\nrpo = \"15m\"\nretention = {{ within = \"7d\" }}\n"
    ));
    assert_eq!(code, 0, "{out}");

    // A 6-hour schedule against a 15-minute RPO without WAL archiving.
    let (code, out) = lint(&format!(
        "{TWO_REGIONS}[[job]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"env:X\"\nschedule = \"0 */6 * * *\"\nrpo = \"15m\"\n"
    ));
    assert_eq!(code, 1);
    assert!(
        out.contains(":17:12: job \"db\": schedule \"0 */6 * * *\" runs every 6h, which cannot meet rpo = \"15m\"")
            && out.contains("WAL archiving"),
        "{out}"
    );
    // …which WAL archiving fixes.
    let (code, out) = lint(&format!(
        "{TWO_REGIONS}[[job]]\nname = \"db\"\nkind = \"postgres\"\nurl = \"env:X\"\nmode = \"physical\"\nwal_archiving = true\nschedule = \"0 */6 * * *\"\nrpo = \"15m\"\n"
    ));
    assert_eq!(code, 0, "{out}");

    // A single region.
    let (code, out) = lint("[[repository]]\nname = \"a\"\nurl = \"s3://bkt-1/x?region=us-west-2\"\n");
    assert_eq!(code, 1);
    assert!(out.contains(":2:8: all repositories are in region \"us-west-2\""), "{out}");

    // A replica in the primary's region.
    let (code, out) =
        lint(&format!("{TWO_REGIONS}[[repository]]\nname = \"c\"\nurl = \"s3://bkt-3/x?region=us-west-2\"\n"));
    assert_eq!(code, 1);
    assert!(out.contains("replica \"c\" is in the same region (us-west-2) as the primary \"a\""), "{out}");

    // Retention shorter than the schedule interval.
    let (code, out) = lint(&format!(
        "{TWO_REGIONS}[[job]]\nname = \"f\"\nkind = \"command\"\ncommand = \"true\"\nschedule = \"0 2 * * *\"\nretention = {{ within = \"12h\" }}\n"
    ));
    assert_eq!(code, 1);
    assert!(out.contains("retention within = 12h is shorter than the schedule interval (1day)"), "{out}");

    // Targets no drill covers.
    let (code, out) = lint(
        "[[repository]]\nname = \"a\"\nurl = \"s3://bkt-1/x?region=us-west-2\"\n\n[[repository]]\nname = \"b\"\nurl = \"s3://bkt-2/x?region=us-east-1\"\n\n[[job]]\nname = \"f\"\nkind = \"command\"\ncommand = \"true\"\nrto = \"1h\"\n",
    );
    assert_eq!(code, 1);
    assert!(out.contains("job \"f\" has RTO/RPO targets but no [[scenario]] drills it"), "{out}");

    // Syntax errors: file:line:column.
    let (code, out) = lint("[[job]\nname = 1\n");
    assert_eq!(code, 1);
    assert!(out.contains(":1:"), "{out}");
}

#[test]
fn prune_never_deletes_what_object_lock_protects() {
    // A bucket with Object Lock and a default COMPLIANCE retention of one day.
    let bucket = format!("lb-lock-{}", hex::encode(rand::random::<[u8; 4]>()));
    let b = bucket.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            use aws_sdk_s3::types::*;
            let c = s3_client("us-east-1").await;
            c.create_bucket().bucket(&b).object_lock_enabled_for_bucket(true).send().await.unwrap();
            c.put_object_lock_configuration()
                .bucket(&b)
                .object_lock_configuration(
                    ObjectLockConfiguration::builder()
                        .object_lock_enabled(ObjectLockEnabled::Enabled)
                        .rule(
                            ObjectLockRule::builder()
                                .default_retention(
                                    DefaultRetention::builder()
                                        .mode(ObjectLockRetentionMode::Compliance)
                                        .days(1)
                                        .build(),
                                )
                                .build(),
                        )
                        .build(),
                )
                .send()
                .await
                .unwrap();
        });
    })
    .join()
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::with_repo(dir, s3_url(&bucket, "us-east-1", "locked"));
    let id = f.backup("worm", &mixed_data(5, 4 << 20));
    let policy = policy_file(
        f.dir.path(),
        &format!(
            "[[repository]]\nname = \"p\"\nurl = \"{}\"\n\n[[job]]\nname = \"worm\"\nkind = \"command\"\ncommand = \"true\"\nretention = {{ keep-last = 1 }}\n",
            f.repo
        ),
    );
    f.backup("worm", &mixed_data(6, 4 << 20));
    // Retention wants the older snapshot gone, but it is locked: it stays, and says so.
    let out: serde_json::Value =
        serde_json::from_str(&ok(&run(&["--json", "forget", "--policy", &policy, "--write-key", f.wk()]))).unwrap();
    assert_eq!(out[0]["locked"][0].as_str(), Some(id.as_str()), "{out}");
    assert_eq!(out[0]["removed"].as_array().unwrap().len(), 0);
    // Prune: nothing unreferenced may be deleted while locked; no error either.
    let r: serde_json::Value =
        serde_json::from_str(&ok(&run(&["--json", "prune", "--repo", &f.repo, "--identity", f.id(), "--grace", "0s"])))
            .unwrap();
    assert_eq!(r["packs_deleted"], 0, "{r}");
    ok(&run(&["check", "--repo", &f.repo, "--identity", f.id(), "--read-data"]));
    assert!(!f.restore(&id).is_empty());
}

#[test]
fn shipped_policies_pass_policy_check() {
    for entry in std::fs::read_dir("policies").unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "toml") {
            let out = run(&["policy", "check", p.to_str().unwrap()]);
            assert!(out.status.success(), "{}: {}{}", p.display(), stdout(&out), stderr(&out));
        }
    }
}

#[test]
fn run_alerts_when_the_newest_recoverable_point_is_older_than_the_rpo() {
    let f = Fixture::local();
    let (sink, rx) = http_sink();
    let policy = policy_file(
        f.dir.path(),
        &format!(
            "[[repository]]\nname = \"p\"\nurl = \"{}\"\n\n[alerts]\nwebhook = \"env:HOOK\"\n\n[[job]]\nname = \"slow\"\nkind = \"command\"\ncommand = \"sleep 2; echo data\"\nrpo = \"1s\"\n",
            f.repo
        ),
    );
    // The run itself succeeds, but its snapshot is already older than a 1-second RPO.
    let out = bin()
        .args(["run", "--policy", &policy, "slow", "--write-key", f.wk()])
        .env("HOOK", format!("{sink}/hook"))
        .output()
        .unwrap();
    ok(&out);
    let (_, _, body) = rx.recv_timeout(Duration::from_secs(5)).expect("no RPO alert");
    let alert: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(alert["kind"], "rpo", "{alert}");
    assert_eq!(alert["job"], "slow");
    assert!(alert["reason"].as_str().unwrap().contains("older than the RPO target 1s"), "{alert}");
}
