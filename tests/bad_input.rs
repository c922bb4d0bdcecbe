//! Bad input: one clear message, exit 1 (2 for usage), no panic, and the
//! repository is left exactly as it was.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[track_caller]
fn fails_cleanly(out: &std::process::Output, code: i32, needle: &str) {
    let e = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {e}");
    assert!(e.contains(needle), "expected {needle:?} in: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    assert!(e.lines().filter(|l| l.starts_with("error:")).count() == 1, "one error line: {e}");
}

fn seeded() -> (Fixture, String, Vec<u8>) {
    let f = Fixture::local();
    let data = mixed_data(3, 6 << 20);
    let id = f.backup("db", &data);
    (f, id, data)
}

#[test]
fn wrong_identity() {
    let (f, id, _) = seeded();
    let other = f.dir.path().join("other.key");
    ok(&run(&["key", "generate", "--output", other.to_str().unwrap()]));
    let before = tree_state(&f.repo_path());
    let out = run(&["restore", "--repo", &f.repo, "--identity", other.to_str().unwrap(), &id, "--to", "-"]);
    fails_cleanly(&out, 1, "cannot decrypt the key of repository");
    assert!(stderr(&out).contains(&f.recipient), "names the recipients the repository expects");
    assert!(out.stdout.is_empty());
    assert_eq!(before, tree_state(&f.repo_path()));
}

#[test]
fn missing_repository() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("nowhere");
    let out = run(&["snapshots", "--repo", repo.to_str().unwrap(), "--identity", "/dev/null"]);
    fails_cleanly(&out, 1, "no lifeboat repository at");
    assert!(stderr(&out).contains("lifeboat init"), "says what to do next");
    let out = run_stdin(
        &["backup", "--repo", repo.to_str().unwrap(), "--write-key", "/dev/null", "--stdin", "--name", "x"],
        b"data",
    );
    fails_cleanly(&out, 1, "no lifeboat repository at");
    assert!(!repo.exists(), "a failed backup must not create anything");
}

#[test]
fn unknown_format_version() {
    let (f, id, _) = seeded();
    let cfg_path = f.repo_path().join("config");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["version"] = 99.into();
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let before = tree_state(&f.repo_path());
    let out = run(&["restore", "--repo", &f.repo, "--identity", f.id(), &id, "--to", "-"]);
    fails_cleanly(&out, 1, "format version 99");
    assert!(stderr(&out).contains("upgrade lifeboat"));
    let out = run_stdin(&["backup", "--repo", &f.repo, "--write-key", f.wk(), "--stdin", "--name", "x"], b"data");
    fails_cleanly(&out, 1, "format version 99");
    assert_eq!(before, tree_state(&f.repo_path()));
}

#[test]
fn unreachable_s3_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let id = dir.path().join("id.key");
    let rcpt = ok(&run(&["key", "generate", "--output", id.to_str().unwrap()])).trim().to_string();
    let url = "s3://some-bucket/x?region=us-east-1&endpoint=http://127.0.0.1:1&allow_http=true";
    let t = Instant::now();
    let out = bin()
        .args(["init", "--repo", url, "--recipient", &rcpt])
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "y")
        .output()
        .unwrap();
    fails_cleanly(&out, 1, "cannot reach http://127.0.0.1:1");
    assert!(t.elapsed() < Duration::from_secs(60), "gave up in {:?}", t.elapsed());
}

#[test]
fn missing_bucket() {
    let f = Fixture::local();
    let url = s3_url("lb-no-such-bucket-here", "us-east-1", "repo");
    let out = run(&["snapshots", "--repo", &url, "--identity", f.id()]);
    fails_cleanly(&out, 1, "bucket lb-no-such-bucket-here does not exist");
    let out = run(&["init", "--repo", &url, "--recipient", &f.recipient]);
    fails_cleanly(&out, 1, "does not exist");
}

#[test]
fn malformed_repo_url_is_a_usage_error() {
    for (url, needle) in [
        ("s3://", "no bucket"),
        ("s3://bucket/x?endpoint=http://127.0.0.1:9000", "plain-http endpoint refused"),
        ("gopher://x/y", "unsupported scheme"),
        ("s3://bucket/x?regoin=us-east-1", "unknown parameter"),
    ] {
        let out = run(&["snapshots", "--repo", url]);
        assert_eq!(out.status.code(), Some(2), "{url}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{url}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"));
    }
}

#[test]
fn unknown_snapshot_id() {
    let (f, _, _) = seeded();
    let before = tree_state(&f.repo_path());
    let out = run(&["restore", "--repo", &f.repo, "--identity", f.id(), "deadbeef", "--to", "-"]);
    fails_cleanly(&out, 1, "no snapshot matches \"deadbeef\"");
    let out = run(&["restore", "--repo", &f.repo, "--identity", f.id(), "latest", "--name", "nope", "--to", "-"]);
    fails_cleanly(&out, 1, "no snapshot matches");
    let out = run(&["restore", "--repo", &f.repo, "--identity", f.id(), "not-hex!", "--to", "-"]);
    fails_cleanly(&out, 1, "no snapshot matches");
    assert_eq!(before, tree_state(&f.repo_path()));
}

fn first_pack(f: &Fixture) -> std::path::PathBuf {
    let packs = f.repo_path().join("packs");
    let sub = std::fs::read_dir(&packs).unwrap().next().unwrap().unwrap().path();
    std::fs::read_dir(sub).unwrap().next().unwrap().unwrap().path()
}

#[test]
fn corrupted_pack_is_detected_and_names_the_snapshot() {
    let (f, id, _) = seeded();
    let pack = first_pack(&f);
    let mut bytes = std::fs::read(&pack).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&pack, &bytes).unwrap();
    let before = tree_state(&f.repo_path());

    // Structure is intact, so plain check passes; --read-data finds the flip.
    ok(&run(&["check", "--repo", &f.repo, "--identity", f.id()]));
    let out = run(&["check", "--repo", &f.repo, "--identity", f.id(), "--read-data"]);
    fails_cleanly(&out, 1, "check found 1 problem");
    let o = stdout(&out);
    assert!(o.contains("affected snapshots") && o.contains(&id[..8]) && o.contains("(db)"), "{o}");

    let target = f.dir.path().join("out.bin");
    let out = run(&["restore", "--repo", &f.repo, "--identity", f.id(), &id, "--to", target.to_str().unwrap()]);
    fails_cleanly(&out, 1, "is corrupt");
    assert!(!target.exists(), "no partial restore file is left behind");
    let leftovers: Vec<_> = std::fs::read_dir(f.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".lifeboat-restore"))
        .collect();
    assert!(leftovers.is_empty());
    assert_eq!(before, tree_state(&f.repo_path()));
}

#[test]
fn truncated_pack_is_detected() {
    let (f, id, _) = seeded();
    let pack = first_pack(&f);
    let bytes = std::fs::read(&pack).unwrap();
    std::fs::write(&pack, &bytes[..bytes.len() - 100]).unwrap();
    let before = tree_state(&f.repo_path());
    let out = run(&["check", "--repo", &f.repo, "--identity", f.id()]);
    fails_cleanly(&out, 1, "check found");
    assert!(stdout(&out).contains("the index says") && stdout(&out).contains(&id[..8]), "{}", stdout(&out));
    let out = run(&["restore", "--repo", &f.repo, "--identity", f.id(), &id, "--to", "-"]);
    fails_cleanly(&out, 1, "is corrupt");
    assert_eq!(before, tree_state(&f.repo_path()));
}

#[test]
fn missing_pack_is_detected() {
    let (f, id, _) = seeded();
    std::fs::remove_file(first_pack(&f)).unwrap();
    let out = run(&["check", "--repo", &f.repo, "--identity", f.id()]);
    fails_cleanly(&out, 1, "check found");
    assert!(stdout(&out).contains("pack object is missing") && stdout(&out).contains(&id[..8]));
}

#[test]
fn usage_errors_exit_2() {
    let out = run(&["backup", "--stdin"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["restore", "--repo", "/tmp/x", "latest"]);
    assert_eq!(out.status.code(), Some(2), "--to is required");
    let out = run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn no_key_given() {
    let (f, _, _) = seeded();
    let out = run_stdin(&["backup", "--repo", &f.repo, "--stdin", "--name", "x"], b"data");
    fails_cleanly(&out, 1, "--write-key FILE");
    let out = run(&["snapshots", "--repo", &f.repo]);
    fails_cleanly(&out, 1, "needs the repository identity");
}

#[test]
fn credential_of_another_repository() {
    let (f, _, _) = seeded();
    let g = Fixture::local();
    let before = tree_state(&f.repo_path());
    let out = run_stdin(&["backup", "--repo", &f.repo, "--write-key", g.wk(), "--stdin", "--name", "x"], b"data");
    fails_cleanly(&out, 1, "write credential is for repository");
    assert_eq!(before, tree_state(&f.repo_path()));
}

#[test]
fn malformed_policy_names_file_line_column() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[[repository]]\nname = \"a\"\nurl = \"/tmp/r\"\n\n[[job]]\nname = \"j\"\nkind = \"postgress\"\n",
    )
    .unwrap();
    let out = run(&["policy", "check", p.to_str().unwrap()]);
    fails_cleanly(&out, 1, &format!("{}:7:8", p.display()));
    let out = run(&["backup", "--policy", p.to_str().unwrap(), "j"]);
    fails_cleanly(&out, 1, &format!("{}:7:8", p.display()));
}

/// A small tmpfs mounted for one test, unmounted however the test ends.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(at: &std::path::Path, size: &str) -> SmallFs {
        std::fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "lifeboat-test", at.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", at.display());
        SmallFs(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let st = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}"), self.0.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "remount {}", self.0.display());
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A full disk, under the repository and under a restore: one clear error,
/// exit 1, no snapshot becomes visible, no partial file is left behind, and
/// once there is room again the next backup succeeds and `check` passes.
/// Mounting a small file system needs root (CI runs as root).
#[test]
fn full_disk_fails_cleanly_and_loses_nothing() {
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        eprintln!("skipping: mounting a small file system needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let small = SmallFs::mount(&dir.path().join("small"), "2m");
    let f = Fixture::with_repo(tempfile::tempdir().unwrap(), small.0.join("repo").display().to_string());
    let data = random_bytes(21, 8 << 20); // incompressible: needs 8 MiB of packs
    let out = run_stdin(&["backup", "--repo", &f.repo, "--write-key", f.wk(), "--stdin", "--name", "db"], &data);
    fails_cleanly(&out, 1, "no space left on the device");
    let list = ok(&run(&["snapshots", "--repo", &f.repo, "--identity", f.id()]));
    assert!(list.contains("no snapshots"), "no snapshot may be visible: {list}");

    small.resize("64m");
    let id = f.backup("db", &data);
    let o = ok(&run(&["check", "--repo", &f.repo, "--identity", f.id(), "--read-data"]));
    assert!(o.contains("no errors"), "{o}");

    // Restoring onto a full file system: the target is never left half-written.
    let target_fs = SmallFs::mount(&dir.path().join("target"), "1m");
    let target = target_fs.0.join("db.bin");
    let out = run(&["restore", "--repo", &f.repo, "--identity", f.id(), &id, "--to", target.to_str().unwrap()]);
    fails_cleanly(&out, 1, "No space left on device");
    assert!(!target.exists(), "a failed restore left {}", target.display());
    let left: Vec<_> = std::fs::read_dir(&target_fs.0).unwrap().collect();
    assert!(left.is_empty(), "temp files left behind: {left:?}");
    assert!(f.restore(&id) == data, "the snapshot still restores");
}

/// A file on stdin is mapped; if another process truncates it meanwhile,
/// the backup gets SIGBUS instead of a short read. That must be one clear
/// line and exit 1, no snapshot, and the repository usable afterwards.
#[test]
fn a_stdin_file_truncated_during_backup_fails_cleanly() {
    use std::io::{BufRead, BufReader};
    let f = Fixture::local();
    let path = f.dir.path().join("input");
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("head -c 200000000 /dev/urandom > {}", path.display())])
        .status()
        .unwrap();
    assert!(status.success());
    let mut child = bin()
        .args(["-vv", "backup", "--repo", &f.repo, "--write-key", f.wk(), "--stdin", "--name", "shrinks"])
        .stdin(std::fs::File::open(&path).unwrap())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Truncate as soon as the file is mapped: the chunker is then at most a
    // few MiB into 200 MB.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut log = String::new();
    loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "backup ended before mapping: {log}");
        log.push_str(&line);
        if line.contains("mapping it") {
            break;
        }
    }
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(1 << 20).unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{log}{rest}");
    let errors: Vec<&str> = rest.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{rest}");
    assert!(errors[0].contains("became shorter while it was being backed up"), "{rest}");
    assert!(!rest.contains("panicked"), "{rest}");
    let list = ok(&run(&["snapshots", "--repo", &f.repo, "--identity", f.id()]));
    assert!(!list.contains("shrinks"), "no snapshot of a truncated file: {list}");
    let data = mixed_data(5, 2 << 20);
    let id = f.backup("after", &data);
    ok(&run(&["check", "--repo", &f.repo, "--identity", f.id()]));
    assert_eq!(f.restore(&id), data);
}
