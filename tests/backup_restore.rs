//! Stream backup and restore through the real binary: byte-identical round
//! trips, dedup, write credentials, the command source.

mod common;

use common::*;

fn roundtrip_cases(f: &Fixture) {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("one-byte", vec![0x42]),
        ("mixed-100MiB", mixed_data(1, 100 << 20)),
        ("text-dump", text_dump(2, 20 << 20)),
    ];
    for (name, data) in &cases {
        let id = f.backup(name, data);
        assert_eq!(id.len(), 32, "snapshot id: {id}");
        let back = f.restore(&id);
        assert_eq!(back.len(), data.len(), "{name}: length");
        assert!(back == *data, "{name}: restored bytes differ");
        // By unique prefix, and by `latest --name`.
        let out = run(&["restore", "--repo", &f.repo, "--identity", f.id(), &id[..8], "--to", "-"]);
        ok(&out);
        assert!(out.stdout == *data, "{name}: by prefix");
        let out = run(&["restore", "--repo", &f.repo, "--identity", f.id(), "latest", "--name", name, "--to", "-"]);
        assert!(out.stdout == *data, "{name}: latest --name");
    }
    // Text compresses: stored bytes well under the input.
    let js = f.backup_json("text-dump-2", &text_dump(3, 8 << 20));
    let stored = js["stats"]["bytes_new_stored"].as_u64().unwrap();
    assert!(stored < (8 << 20) / 2, "text dump stored {stored} bytes");
    let o = ok(&run(&["check", "--repo", &f.repo, "--identity", f.id(), "--read-data"]));
    assert!(o.contains("no errors"), "{o}");
}

#[test]
fn roundtrips_are_byte_identical_on_local() {
    roundtrip_cases(&Fixture::local());
}

#[test]
fn roundtrips_are_byte_identical_on_s3() {
    roundtrip_cases(&Fixture::s3());
}

#[test]
fn restore_to_a_file_is_atomic_and_never_clobbers() {
    let f = Fixture::local();
    let data = mixed_data(9, 3 << 20);
    let id = f.backup("file", &data);
    let target = f.dir.path().join("out.bin");
    ok(&run(&["restore", "--repo", &f.repo, "--identity", f.id(), &id, "--to", target.to_str().unwrap()]));
    assert!(std::fs::read(&target).unwrap() == data);
    let again = run(&["restore", "--repo", &f.repo, "--identity", f.id(), &id, "--to", target.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    ok(&run(&["restore", "--repo", &f.repo, "--identity", f.id(), &id, "--to", target.to_str().unwrap(), "--force"]));
}

/// `restore --to - > file` writes stdout with O_DIRECT when it can: the
/// flag is on the open file, which the shell shares, so whatever the shell
/// writes next must land after the restored bytes. At an unaligned offset,
/// or appending, stdout is written the ordinary way; all three are exact.
#[test]
fn restore_to_stdout_redirected_into_a_file_leaves_the_file_usable() {
    let f = Fixture::local();
    let data = mixed_data(11, (5 << 20) + 12_345);
    let id = f.backup("stdout-file", &data);
    let exe = env!("CARGO_BIN_EXE_lifeboat");
    for (case, head, redirect, direct) in
        [("aligned", 4096usize, ">", true), ("unaligned", 100, ">", false), ("append", 4096, ">>", false)]
    {
        let out = f.dir.path().join(format!("{case}.out"));
        let script = format!(
            "{{ head -c {head} /dev/zero; \"$1\" -vv restore --repo \"$2\" --identity \"$3\" \"$4\" --to - 2>\"$5\"; \
             echo \"exit $?\"; echo trailer; }} {redirect} \"$6\""
        );
        let log = f.dir.path().join(format!("{case}.log"));
        let st = std::process::Command::new("bash")
            .args(["-c", &script, "_", exe, &f.repo, f.id(), &id, log.to_str().unwrap(), out.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success(), "{case}");
        let mut want = vec![0u8; head];
        want.extend_from_slice(&data);
        want.extend_from_slice(b"exit 0\ntrailer\n");
        let got = std::fs::read(&out).unwrap();
        assert_eq!(got.len(), want.len(), "{case}: length");
        assert!(got == want, "{case}: the file differs from header + restored bytes + trailer");
        let log = std::fs::read_to_string(&log).unwrap();
        assert_eq!(log.contains("writing it with O_DIRECT"), direct, "{case}: direct path taken? log:\n{log}");
    }
}

#[test]
fn same_stream_twice_adds_under_1pct_and_an_insert_under_5pct() {
    let f = Fixture::local();
    let data = mixed_data(7, 200 << 20);
    let first = f.backup_json("db", &data);
    let first_stored = first["stats"]["bytes_new_stored"].as_u64().unwrap();
    let size0 = du(&f.repo_path());
    let second = f.backup_json("db", &data);
    let size1 = du(&f.repo_path());
    let growth = (size1 - size0) as f64 / first_stored as f64;
    eprintln!("identical second backup: repository grew {} bytes ({:.3}%)", size1 - size0, growth * 100.0);
    assert!(growth < 0.01, "identical stream added {:.2}%", growth * 100.0);
    assert_eq!(second["stats"]["bytes_new_stored"].as_u64().unwrap(), 0);

    let mut edited = data.clone();
    let mid = edited.len() / 2;
    edited.splice(mid..mid, random_bytes(99, 1024));
    let third = f.backup_json("db", &edited);
    let size2 = du(&f.repo_path());
    let growth = (size2 - size1) as f64 / first_stored as f64;
    eprintln!("1 KiB insert: repository grew {} bytes ({:.3}%)", size2 - size1, growth * 100.0);
    assert!(growth < 0.05, "1 KiB insert added {:.2}%", growth * 100.0);
    assert!(f.restore(third["id"].as_str().unwrap()) == edited);
}

#[test]
fn write_credential_can_back_up_but_not_read() {
    let f = Fixture::local();
    let data = text_dump(5, 1 << 20);
    let id = f.backup("w", &data);
    // Restoring, listing and checking with the write credential all fail clearly.
    for args in [vec!["restore", "--repo", &f.repo, &id, "--to", "-"], vec!["check", "--repo", &f.repo, "--read-data"]]
    {
        let out = bin().args(&args).env("LIFEBOAT_WRITE_KEY_FILE", f.wk()).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let e = stderr(&out);
        assert!(e.contains("needs the repository identity") && e.contains("write credential"), "{e}");
        assert!(out.stdout.is_empty(), "no data may leak: {:?}", out.stdout);
    }
    // Passing the credential where an identity is expected is named as such.
    let out = run(&["restore", "--repo", &f.repo, "--identity", f.wk(), &id, "--to", "-"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is a write credential"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    // Listing summaries works with the credential; the manifests' contents do not leak.
    let out =
        bin().args(["--json", "snapshots", "--repo", &f.repo]).env("LIFEBOAT_WRITE_KEY_FILE", f.wk()).output().unwrap();
    let list: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert_eq!(list[0]["name"], "w");
    assert!(list[0].get("source").is_none() && list[0].get("streams").is_none(), "{}", stdout(&out));
    // The credential holds no age identity at all.
    let cred = std::fs::read_to_string(&f.write_key).unwrap();
    assert!(!cred.contains("AGE-SECRET-KEY"));
    assert!(f.restore(&id) == data);
}

#[test]
fn command_jobs_back_up_stdout_and_fail_without_a_snapshot() {
    let f = Fixture::local();
    let src = f.dir.path().join("data");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), text_dump(1, 300_000)).unwrap();
    std::fs::write(src.join("sub/b.bin"), random_bytes(2, 500_000)).unwrap();
    let policy = f.dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            r#"[[repository]]
name = "local"
url = "{repo}"

[[job]]
name = "files"
kind = "command"
command = "tar -C {src} -c ."
tags = ["files"]

[[job]]
name = "broken"
kind = "command"
command = "echo partial; exit 3"
"#,
            repo = f.repo,
            src = src.display()
        ),
    )
    .unwrap();
    let p = policy.to_str().unwrap();
    let out = run(&["backup", "--policy", p, "files", "--write-key", f.wk()]);
    let id = ok(&out).trim().to_string();
    let dest = f.dir.path().join("restored");
    std::fs::create_dir_all(&dest).unwrap();
    ok(&run(&[
        "restore",
        "--repo",
        &f.repo,
        "--identity",
        f.id(),
        &id,
        "--to-command",
        &format!("tar -C {} -x", dest.display()),
    ]));
    assert_eq!(std::fs::read(dest.join("a.txt")).unwrap(), std::fs::read(src.join("a.txt")).unwrap());
    assert_eq!(std::fs::read(dest.join("sub/b.bin")).unwrap(), std::fs::read(src.join("sub/b.bin")).unwrap());

    let before = ok(&run(&["--json", "snapshots", "--repo", &f.repo, "--identity", f.id()]));
    let out = run(&["backup", "--policy", p, "broken", "--write-key", f.wk()]);
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(e.contains("broken") && e.contains("status 3") && e.contains("no snapshot was written"), "{e}");
    let after = ok(&run(&["--json", "snapshots", "--repo", &f.repo, "--identity", f.id()]));
    assert_eq!(before, after, "a failed command must not leave a snapshot");
    let list: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["tags"][0], "files");

    // A failing restore command fails the restore.
    let out = run(&["restore", "--repo", &f.repo, "--identity", f.id(), &id, "--to-command", "cat >/dev/null; exit 4"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("status 4"), "{}", stderr(&out));
}

#[test]
fn snapshots_lists_json_and_text() {
    let f = Fixture::local();
    f.backup("a", b"first");
    let out = run_stdin(
        &["backup", "--repo", &f.repo, "--write-key", f.wk(), "--stdin", "--name", "b", "--tag", "manual"],
        b"second",
    );
    ok(&out);
    let js: serde_json::Value =
        serde_json::from_str(&ok(&run(&["--json", "snapshots", "--repo", &f.repo, "--identity", f.id()]))).unwrap();
    let arr = js.as_array().unwrap();
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[1]["name"], "b");
    assert_eq!(arr[1]["tags"][0], "manual");
    assert_eq!(arr[1]["size"], 6);
    let text = ok(&run(&["snapshots", "--repo", &f.repo, "--identity", f.id(), "--name", "a"]));
    assert!(text.contains("1 snapshot(s)") && text.contains(" a "), "{text}");
}

/// A file redirected to stdin is mapped, not read (`source::Mapped`): the
/// snapshot holds exactly the bytes from stdin's offset on, and the shared
/// offset ends at the end of the file, as if it had been read.
#[test]
fn a_file_on_stdin_is_mapped_from_its_offset_and_round_trips() {
    use std::io::{Seek, SeekFrom};
    let f = Fixture::local();
    let data = mixed_data(21, 6 << 20);
    let path = f.dir.path().join("input");
    std::fs::write(&path, &data).unwrap();
    let mut input = std::fs::File::open(&path).unwrap();
    // An unaligned start: the mapping begins at a page boundary before it.
    input.seek(SeekFrom::Start(12_345)).unwrap();
    let out = bin()
        .args(["-vv", "backup", "--repo", &f.repo, "--write-key", f.wk(), "--stdin", "--name", "mapped"])
        .stdin(input.try_clone().unwrap())
        .output()
        .unwrap();
    let id = ok(&out).trim().to_string();
    assert!(stderr(&out).contains("mapping it"), "took the mapped path: {}", stderr(&out));
    assert_eq!(input.stream_position().unwrap(), data.len() as u64, "stdin's offset moved to the end");
    assert_eq!(sha(&f.restore(&id)), sha(&data[12_345..]));
}
