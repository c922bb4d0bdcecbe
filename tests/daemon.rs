//! The daemon: runs on schedule, never overlaps a job with itself, serves
//! /metrics and /healthz, and SIGTERM mid-run leaves no partial snapshot.

mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn daemon_runs_on_time_without_overlap_and_stops_cleanly() {
    let f = Fixture::local();
    let log = f.dir.path().join("runs.log");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    // Every 2 s; each run takes ~3 s, so every other tick finds it still running.
    let cmd = format!(
        "echo start $(date +%s.%N) >> {log}; head -c 3000000 /dev/urandom; sleep 3; echo end $(date +%s.%N) >> {log}",
        log = log.display()
    );
    let policy = f.dir.path().join("p.toml");
    std::fs::write(
        &policy,
        format!(
            "[[repository]]\nname = \"p\"\nurl = \"{}\"\n\n[daemon]\nmax_concurrent = 2\nlisten = \"{addr}\"\n\n[[job]]\nname = \"tick\"\nkind = \"command\"\ncommand = \"{}\"\nschedule = \"*/2 * * * * *\"\n",
            f.repo,
            cmd.replace('"', "\\\"")
        ),
    )
    .unwrap();
    let state = f.dir.path().join("state.json");
    let mut child = bin()
        .args([
            "daemon",
            "--policy",
            policy.to_str().unwrap(),
            "--write-key",
            f.wk(),
            "--state-file",
            state.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Let a few runs happen, then SIGTERM in the middle of one.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let ends = text.lines().filter(|l| l.starts_with("end")).count();
        let last_is_start = text.lines().last().is_some_and(|l| l.starts_with("start"));
        if ends >= 3 && last_is_start {
            break;
        }
        assert!(Instant::now() < deadline, "runs did not happen: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http_get(&addr, "/healthz").lines().next().unwrap(), "HTTP/1.1 200 OK");
    let metrics = http_get(&addr, "/metrics");
    let body = metrics.split("\r\n\r\n").nth(1).unwrap().to_string();
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text");
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "lifeboat_last_success_timestamp_seconds" && s.labels.get("job") == Some("tick")),
        "{body}"
    );

    let snaps_before_term = std::fs::read_dir(f.repo_path().join("snapshots")).unwrap().count();
    assert!(std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let t = Instant::now();
    let status = child.wait().unwrap();
    assert!(status.success(), "daemon exit: {status:?}");
    assert!(t.elapsed() < Duration::from_secs(5), "SIGTERM took {:?}", t.elapsed());
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(err.contains("run(s) abandoned before commit"), "{err}");
    std::thread::sleep(Duration::from_secs(4)); // let the orphaned shell finish its log line

    // Runs never overlapped, and each started on an even second.
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<(String, f64)> = text
        .lines()
        .map(|l| {
            let mut p = l.split_whitespace();
            (p.next().unwrap().to_string(), p.next().unwrap().parse().unwrap())
        })
        .collect();
    let mut open = false;
    for (kind, t) in &events {
        match kind.as_str() {
            "start" => {
                assert!(!open, "a run started while another was running: {text}");
                open = true;
                let frac = t - (t / 2.0).floor() * 2.0;
                assert!(frac < 1.0, "run started {frac:.2}s after its scheduled time: {text}");
            }
            _ => open = false,
        }
    }
    // Only completed runs are visible, and they are whole.
    let snaps = std::fs::read_dir(f.repo_path().join("snapshots")).unwrap().count();
    assert_eq!(snaps, snaps_before_term, "the run interrupted by SIGTERM must not become visible");
    let starts = events.iter().filter(|(k, _)| k == "start").count();
    assert!(snaps < starts, "{snaps} snapshots for {starts} starts");
    let out = ok(&run(&["check", "--repo", &f.repo, "--identity", f.id()]));
    assert!(out.contains("no errors"), "{out}");
    let out = run(&["restore", "--repo", &f.repo, "--identity", f.id(), "latest", "--to", "-"]);
    ok(&out);
    assert_eq!(out.stdout.len(), 3_000_000);
}
