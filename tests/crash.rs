//! A backup killed with SIGKILL leaves no visible snapshot; `check` passes
//! and the next backup succeeds.

mod common;

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn kill_9_during_backup() {
    let f = Fixture::local();
    let base = mixed_data(11, 8 << 20);
    let base_id = f.backup("base", &base);

    let mut child = bin()
        .args(["backup", "--repo", &f.repo, "--write-key", f.wk(), "--stdin", "--name", "killed"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let packs_before = count_packs(&f);
    // Feed data until packs start landing, then kill mid-stream.
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seed = 100;
    while count_packs(&f) < packs_before + 2 {
        assert!(Instant::now() < deadline, "no packs were written");
        stdin.write_all(&random_bytes(seed, 4 << 20)).unwrap();
        seed += 1;
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
    drop(stdin);

    let list = ok(&run(&["--json", "snapshots", "--repo", &f.repo, "--identity", f.id()]));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "the killed backup must not be visible");
    let out = ok(&run(&["check", "--repo", &f.repo, "--identity", f.id(), "--read-data"]));
    assert!(out.contains("no errors"), "{out}");
    assert!(out.contains("not referenced by any index"), "orphaned packs are reported: {out}");

    let next = mixed_data(12, 8 << 20);
    let id = f.backup("after", &next);
    assert!(f.restore(&id) == next);
    assert!(f.restore(&base_id) == base);
}

fn count_packs(f: &Fixture) -> usize {
    let packs = f.repo_path().join("packs");
    let Ok(rd) = std::fs::read_dir(packs) else { return 0 };
    rd.flatten().map(|d| std::fs::read_dir(d.path()).map(|r| r.count()).unwrap_or(0)).sum()
}
