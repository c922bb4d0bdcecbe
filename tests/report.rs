//! `lifeboat report`: a month of runs rehearsed under a simulated clock
//! (LIFEBOAT_CLOCK), then the report's figures checked against the schedule
//! that was run, the HTML parsed and rendered in headless Chromium.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::LazyLock;

use common::*;

/// The seeded repository, built once per test binary.
struct Seeded {
    identity: String,
    policy: String,
    /// The same repositories, but the primary's URL points at nothing: the primary region is gone.
    policy_primary_gone: String,
}

static SEEDED: LazyLock<Seeded> = LazyLock::new(seed);

const MONTH: &str = "2026-10";
/// "Now" for the report runs: after October, so the month is complete.
const NOW: &str = "2026-11-21T12:00:00Z";
/// orders-db does not run on these days of October: a 3-day gap (Oct 9 02:00 → Oct 12 02:00).
const ORDERS_SKIPPED: [u32; 2] = [10, 11];
/// files fails on these days (a marker file makes its command fail).
const FILES_FAILS: [u32; 2] = [5, 20];
/// Restore verifications: (day, 03:00, job, passes).
const VERIFICATIONS: [(u32, &str, bool); 3] = [(7, "orders-db", true), (14, "files", true), (28, "files", false)];
/// Drills: (time, scenario, passes). The database-loss drill falls in orders-db's gap: 58 h of data lost
/// against a 1-day RPO target, although the restore itself is well within its RTO.
const DRILLS: [(&str, &str, bool); 2] =
    [("2026-10-11T12:00:00Z", "orders-db-loss", false), ("2026-10-15T04:00:00Z", "region-loss", true)];

fn lifeboat_at(clock: &str, args: &[&str]) -> Output {
    bin().env("LIFEBOAT_CLOCK", clock).args(args).output().expect("spawn lifeboat")
}

/// A primary and a replica repository, two `command` jobs, and `lifeboat run`
/// once a day at 02:00 through October 2026 (plus one run the evening
/// before and one the day after), each under LIFEBOAT_CLOCK.
fn seed() -> Seeded {
    let started = std::time::Instant::now();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report-fixture");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let identity = dir.join("id.key").display().to_string();
    let write_key = dir.join("write.key").display().to_string();
    let primary = dir.join("primary").display().to_string();
    let replica = dir.join("replica").display().to_string();
    let marker = dir.join("files-broken").display().to_string();
    let verify_marker = dir.join("verify-broken").display().to_string();
    let recipient = ok(&run(&["key", "generate", "--output", &identity])).trim().to_string();
    ok(&run(&["init", "--repo", &primary, "--recipient", &recipient, "--write-key-out", &write_key]));
    let body = |primary_url: &str| {
        format!(
            r#"[[repository]]
name = "primary"
url = "{primary_url}"
region = "us-west-2"

[[repository]]
name = "dr"
url = "{replica}"
region = "eu-west-1"

[[scenario]]
name = "region-loss"
kind = "region-loss"
replica = "dr"

[[scenario]]
name = "orders-db-loss"
kind = "database-loss"
jobs = ["orders-db"]

[[job]]
name = "orders-db"
kind = "command"
command = "seq 1 40000 | sed 's/^/order /'; date +%s%N"
schedule = "0 2 * * *"
tier = "critical"
rpo = "1d"
rto = "15m"

[[job]]
name = "files"
kind = "command"
command = "test ! -e {marker} && seq 1 20000 | sed 's/^/file /'"
schedule = "0 2 * * *"
tier = "non-critical"
rpo = "50h"
rto = "1h"

[job.verify]
command = "grep -c file >/dev/null && test ! -e {verify_marker}"
"#
        )
    };
    let policy = dir.join("policy.toml").display().to_string();
    std::fs::write(&policy, body(&primary)).unwrap();
    let policy_primary_gone = dir.join("policy-primary-gone.toml").display().to_string();
    std::fs::write(&policy_primary_gone, body(&dir.join("gone").display().to_string())).unwrap();

    let run_job = |clock: &str, job: &str, expect_ok: bool| {
        let out = lifeboat_at(clock, &["run", "--policy", &policy, job, "--write-key", &write_key]);
        assert_eq!(out.status.success(), expect_ok, "run {job} at {clock}: {}", stderr(&out));
    };
    // The evening before the month: the first gap of orders-db counts from here.
    run_job("2026-09-30T20:00:00Z", "orders-db", true);
    for day in 1..=31 {
        let clock = format!("2026-10-{day:02}T02:00:00Z");
        if !ORDERS_SKIPPED.contains(&day) {
            run_job(&clock, "orders-db", true);
        }
        let broken = FILES_FAILS.contains(&day);
        if broken {
            std::fs::write(&marker, b"").unwrap();
        }
        run_job(&clock, "files", !broken);
        let _ = std::fs::remove_file(&marker);
        for (_, job, passes) in VERIFICATIONS.iter().filter(|v| v.0 == day) {
            if !passes {
                std::fs::write(&verify_marker, b"").unwrap();
            }
            let clock = format!("2026-10-{day:02}T03:00:00Z");
            let out = lifeboat_at(&clock, &["verify", "--policy", &policy, job, "--identity", &identity]);
            assert_eq!(out.status.success(), *passes, "verify {job} at {clock}: {}", stderr(&out));
            let _ = std::fs::remove_file(&verify_marker);
        }
        for (clock, scenario, passes) in DRILLS.iter().filter(|d| d.0.starts_with(&format!("2026-10-{day:02}"))) {
            let out =
                lifeboat_at(clock, &["drill", "--policy", &policy, "--scenario", scenario, "--identity", &identity]);
            assert_eq!(out.status.success(), *passes, "drill {scenario} at {clock}: {}", stderr(&out));
        }
    }
    // After the month: must not shorten October's last gap (Oct 31 02:00 → Nov 1 00:00).
    run_job("2026-11-01T02:00:00Z", "orders-db", true);
    eprintln!("report fixture: 63 runs, 3 verifications, 2 drills in {:.1}s", started.elapsed().as_secs_f64());
    Seeded { identity, policy, policy_primary_gone }
}

fn report(s: &Seeded, policy: &str, extra: &[&str]) -> Output {
    let mut args = vec!["report", "--policy", policy, "--identity", &s.identity, "--month", MONTH];
    args.extend_from_slice(extra);
    lifeboat_at(NOW, &args)
}

fn json_report(s: &Seeded, policy: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--format", "json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&report(s, policy, &args))).expect("report JSON")
}

fn job<'a>(r: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    r["jobs"].as_array().unwrap().iter().find(|j| j["job"] == name).unwrap_or_else(|| panic!("no job {name}: {r}"))
}

fn artifacts() -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn json_report_has_the_exact_counts_and_achieved_rpo_of_the_rehearsed_month() {
    let s = &*SEEDED;
    let r = json_report(s, &s.policy, &[]);
    assert_eq!(r["format"], "lifeboat-report/1");
    assert_eq!(r["month"], MONTH);
    assert_eq!(r["month_complete"], true);
    assert_eq!(r["records_from"]["name"], "primary");
    let sum = &r["summary"];
    // 29 orders-db runs + 31 files runs in October, 2 of which failed.
    assert_eq!(sum["backups_ok"], 58, "{sum}");
    assert_eq!(sum["backups_failed"], 2, "{sum}");
    assert_eq!(sum["jobs_total"], 2, "{sum}");
    assert_eq!(sum["jobs_with_rpo_target"], 2, "{sum}");
    assert_eq!(sum["jobs_meeting_rpo"], 1, "{sum}");
    assert_eq!((sum["verifications_passed"].as_u64(), sum["verifications_failed"].as_u64()), (Some(2), Some(1)));
    assert_eq!((sum["drills_passed"].as_u64(), sum["drills_failed"].as_u64()), (Some(1), Some(1)));
    // Both restores were far within their RTO; the failed drill failed on data loss.
    assert_eq!((sum["jobs_with_rto_measured"].as_u64(), sum["jobs_meeting_rto"].as_u64()), (Some(2), Some(2)));

    let orders = job(&r, "orders-db");
    assert_eq!((orders["backups_ok"].as_u64(), orders["backups_failed"].as_u64()), (Some(29), Some(0)));
    // Oct 9 02:00 → Oct 12 02:00: 3 days, against a 1-day target.
    assert_eq!(orders["achieved_rpo_secs"], 259200, "{orders}");
    assert_eq!(orders["rpo_target_secs"], 86400);
    assert_eq!(orders["rpo_ok"], false);
    assert_eq!(orders["recoverable_at_start"], true, "the Sep 30 snapshot is recoverable on Oct 1");
    let gaps = orders["gaps_over_target"].as_array().unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert!(gaps[0]["from"].as_str().unwrap().starts_with("2026-10-09T02:00:00"), "{gaps:?}");
    assert!(gaps[0]["to"].as_str().unwrap().starts_with("2026-10-12T02:00:00"), "{gaps:?}");
    assert_eq!(orders["backup_points"].as_array().unwrap().len(), 29);
    assert_eq!((orders["verifications_passed"].as_u64(), orders["drills"].as_u64()), (Some(1), Some(2)));
    assert_eq!(orders["rto_ok"], true);
    // The database-loss drill on Oct 11 12:00 could only go back to Oct 9 02:00.
    let lost = orders["drill_rpo_secs"].as_f64().unwrap();
    assert!((lost - 58.0 * 3600.0).abs() < 5.0, "{orders}");
    assert!(orders["drill_rto_secs"].as_f64().unwrap() < 900.0);

    let files = job(&r, "files");
    assert_eq!((files["backups_ok"].as_u64(), files["backups_failed"].as_u64()), (Some(29), Some(2)));
    // The failures on Oct 5 and Oct 20 each leave a 2-day gap, within the 50 h target.
    assert_eq!(files["achieved_rpo_secs"], 172800, "{files}");
    assert_eq!(files["rpo_ok"], true);
    assert_eq!(files["recoverable_at_start"], false);
    let failures: Vec<&str> =
        files["failures"].as_array().unwrap().iter().map(|f| &f["time"].as_str().unwrap()[..10]).collect();
    assert_eq!(failures, ["2026-10-05", "2026-10-20"]);
    assert!(files["failures"][0]["error"].as_str().unwrap().contains("exited"), "{files}");

    assert_eq!(r["verdict"], "fail");
    let reasons: Vec<&str> = r["reasons"].as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
    assert!(reasons[0].starts_with("orders-db: RPO target 1d missed"), "{reasons:?}");
    assert!(reasons.iter().any(|x| x.contains("files: 2 backup run(s) failed")), "{reasons:?}");
    assert!(
        reasons.contains(
            &"drill orders-db-loss on Oct 11 failed: orders-db would have lost 2d 10h of data (RPO target 1d)"
        ),
        "{reasons:?}"
    );
    assert!(reasons.contains(&"files: restore verification on Oct 28 failed"), "{reasons:?}");
    assert!(!reasons.iter().any(|x| x.contains("no drill")), "{reasons:?}");
    let drills: Vec<(&str, bool)> = r["drills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["scenario"].as_str().unwrap(), d["ok"].as_bool().unwrap()))
        .collect();
    assert_eq!(drills, [("orders-db-loss", false), ("region-loss", true)]);
    assert_eq!(r["drills"][1]["repository"], "dr");
    assert_eq!(r["verifications"].as_array().unwrap().len(), 3);

    // Storage in both regions, deduplicated: 60 near-identical snapshots.
    let storage = r["storage"].as_array().unwrap();
    assert_eq!(storage.len(), 2);
    for (row, (name, region)) in storage.iter().zip([("primary", "us-west-2"), ("dr", "eu-west-1")]) {
        assert_eq!((row["repository"].as_str(), row["region"].as_str()), (Some(name), Some(region)));
        assert_eq!(row["reachable"], true, "{row}");
        assert_eq!(row["snapshots"], 60, "{row}");
        assert!(row["stored_bytes"].as_u64().unwrap() > 0);
        assert!(row["dedup_ratio"].as_f64().unwrap() > 5.0, "{row}");
    }
    // Every October run replicated to "dr".
    let rep = r["replication"].as_array().unwrap();
    assert_eq!(rep.len(), 1, "{rep:?}");
    assert_eq!((rep[0]["replica"].as_str(), rep[0]["region"].as_str()), (Some("dr"), Some("eu-west-1")));
    assert_eq!(rep[0]["runs"], 60);
}

#[test]
fn markdown_report_has_the_summary_line_and_tables() {
    let s = &*SEEDED;
    let md = ok(&report(s, &s.policy, &["--format", "md"]));
    for want in [
        "# lifeboat DR report — October 2026",
        "**FAIL** · backups 58 ok / 2 failed · verifications 2 passed / 1 failed · drills 1 passed / 1 failed",
        "RTO met by 2 of 2 drilled jobs",
        "| orders-db-loss | orders-db | primary |",
        "| region-loss | files | dr |",
        "RPO met by 1 of 2 jobs",
        "| orders-db | critical | 29 | 0 | 3d (259200 s) | 1d | ❌ **missed**",
        "| files | non-critical | 29 | 2 | 2d (172800 s) | 2d 2h | ✅ met",
        "## Gaps beyond the RPO target",
        "## Failed backup runs",
        "| primary (primary) | us-west-2 | 60 |",
        "| dr | eu-west-1 | 60 |",
    ] {
        assert!(md.contains(want), "markdown lacks {want:?}:\n{md}");
    }
}

/// The HTML report, written with --output (the path is printed).
fn html_report(s: &Seeded) -> (PathBuf, String) {
    let path = artifacts().join("report.html");
    let out = report(s, &s.policy, &["--format", "html", "--output", path.to_str().unwrap()]);
    assert_eq!(ok(&out).trim(), path.to_str().unwrap());
    assert!(stderr(&out).contains("FAIL"), "{}", stderr(&out));
    let html = std::fs::read_to_string(&path).unwrap();
    (path, html)
}

#[test]
fn html_report_is_valid_self_contained_and_has_its_charts() {
    use scraper::{Html, Selector};
    let s = &*SEEDED;
    let (path, html) = html_report(s);
    let doc = Html::parse_document(&html);
    assert!(doc.errors.is_empty(), "HTML parse errors in {}: {:?}", path.display(), doc.errors);
    let sel = |q: &str| Selector::parse(q).unwrap();
    // Charts: measured RTO vs target, and the RPO timeline.
    assert_eq!(doc.select(&sel("svg")).count(), 2, "{html}");
    assert_eq!(doc.select(&sel("svg#rto-chart")).count(), 1);
    assert_eq!(doc.select(&sel("svg#rpo-timeline")).count(), 1);
    // The RPO timeline: one red bar for the one gap over target, a dot per backup, a cross per failure.
    let timeline = doc.select(&sel("svg#rpo-timeline")).next().unwrap();
    let red_bars = timeline.select(&sel("rect[fill=\"#c5221f\"] > title")).count();
    assert_eq!(red_bars, 1);
    assert_eq!(timeline.select(&sel("circle")).count(), 58 + 1, "58 backups + the legend's dot");
    assert_eq!(timeline.select(&sel("path > title")).count(), 2);
    // Nothing external: no scripts, links, images, fonts or URLs.
    for q in ["script", "link", "img", "iframe", "object", "embed", "base"] {
        assert_eq!(doc.select(&sel(q)).count(), 0, "<{q}> in the report");
    }
    for el in doc.select(&sel("*")) {
        for (name, value) in el.value().attrs() {
            if ["src", "href", "xlink:href", "action", "srcset"].contains(&name) {
                panic!("<{} {name}={value:?}> in the report", el.value().name());
            }
        }
    }
    let lower = html.to_ascii_lowercase();
    for bad in ["http://", "https://", "url(", "@import", "src=", "href="] {
        assert!(!lower.contains(bad), "the report contains {bad:?}");
    }
    // The five-second read, and the figures.
    let banner = doc.select(&sel("#verdict")).next().unwrap();
    assert_eq!(banner.value().attr("data-verdict"), Some("fail"));
    assert!(banner.text().collect::<String>().contains("FAIL"));
    let tile = |id: &str| doc.select(&sel(&format!("#tile-{id}"))).next().unwrap().text().collect::<Vec<_>>().join(" ");
    assert!(tile("backups").contains("58 ok") && tile("backups").contains("2 failed"), "{}", tile("backups"));
    assert!(tile("rpo").contains("1/2"), "{}", tile("rpo"));
    // Measured RTO: one bar per job (both drilled), and a target marker each.
    let rto = doc.select(&sel("svg#rto-chart")).next().unwrap();
    let bars: Vec<String> = rto.select(&sel("rect > title")).map(|t| t.text().collect()).collect();
    assert_eq!(bars.iter().filter(|t| t.contains("slowest drill recovery")).count(), 2, "{bars:?}");
    assert_eq!(bars.iter().filter(|t| t.starts_with("target")).count(), 2, "{bars:?}");
    assert!(tile("verifications").contains("2/3"), "{}", tile("verifications"));
    assert!(tile("drills").contains("1/2"), "{}", tile("drills"));
    assert!(tile("rto").contains("2/2"), "{}", tile("rto"));
    let row = |name: &str| doc.select(&sel(&format!("tr[data-job=\"{name}\"]"))).next().unwrap();
    assert_eq!(row("orders-db").value().attr("data-achieved-rpo-secs"), Some("259200"));
    assert_eq!(row("orders-db").value().attr("data-rpo-ok"), Some("false"));
    assert_eq!(row("files").value().attr("data-achieved-rpo-secs"), Some("172800"));
    assert_eq!(row("files").value().attr("data-backups-failed"), Some("2"));
    assert!(row("orders-db").text().collect::<String>().contains("MISSED"));
}

#[test]
fn html_report_screenshot_in_headless_chromium_is_not_blank() {
    let s = &*SEEDED;
    let (html_path, _) = html_report(s);
    let png = artifacts().join("report.png");
    let _ = std::fs::remove_file(&png);
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("timeout")
        .args(["120", "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1280,1600")
        .arg(format!("file://{}", html_path.display()))
        .output()
        .expect("run chromium (Debian's `chromium`; scripts/install-deps installs it)");
    assert!(png.exists(), "chromium wrote no screenshot: {:?}\n{}", out.status, stderr(&out));
    println!("screenshot of the HTML report: {}", png.display());

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (1280, 1600), "screenshot {}", png.display());
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let pixels: Vec<[u8; 3]> = buf[..info.buffer_size()].chunks(channels).map(|p| [p[0], p[1], p[2]]).collect();
    let near = |p: &[u8; 3], c: [u8; 3]| p.iter().zip(c).all(|(a, b)| a.abs_diff(b) <= 12);
    let non_white = pixels.iter().filter(|p| p.iter().any(|c| *c < 235)).count();
    let colours: std::collections::HashSet<[u8; 3]> = pixels.iter().map(|p| p.map(|c| c >> 4)).collect();
    let red = pixels.iter().filter(|p| near(p, [0xc5, 0x22, 0x1f])).count();
    let green = pixels.iter().filter(|p| near(p, [0x18, 0x80, 0x38])).count();
    let share = non_white as f64 / pixels.len() as f64;
    // Cards are white on a light grey page: a tenth of strong colour and text is a rendered report.
    assert!(share > 0.1, "only {:.0}% of {} is not white: blank?", share * 100.0, png.display());
    assert!(colours.len() > 40, "only {} distinct colours in {}", colours.len(), png.display());
    // The FAIL banner (about 1150 × 130 px of red) and the green of the charts.
    assert!(red > 50_000, "{red} FAIL-red pixels in {}: no banner?", png.display());
    assert!(green > 1_000, "{green} green pixels in {}: no charts?", png.display());
}

#[test]
fn report_from_the_replica_when_the_primary_region_is_gone() {
    let s = &*SEEDED;
    let from_primary = json_report(s, &s.policy, &[]);
    let r = json_report(s, &s.policy_primary_gone, &["--repository", "dr"]);
    assert_eq!(r["records_from"]["name"], "dr");
    assert_eq!(r["records_from"]["primary"], false);
    assert_eq!(r["jobs"], from_primary["jobs"], "the replica holds the same records");
    assert_eq!(r["summary"]["backups_ok"], 58);
    let primary = &r["storage"][0];
    assert_eq!((primary["repository"].as_str(), primary["reachable"].as_bool()), (Some("primary"), Some(false)));
    assert!(primary["error"].as_str().unwrap().contains("no lifeboat repository"), "{primary}");
    assert_eq!(r["storage"][1]["reachable"], true);
    assert!(r["reasons"].as_array().unwrap().iter().any(|x| x.as_str().unwrap().contains("unreachable")));
    // An unknown repository name is an error that lists the names.
    let out = report(s, &s.policy, &["--repository", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no repository named \"nope\" (repositories: primary, dr)"), "{}", stderr(&out));
}

fn small_policy(dir: &Path, repo: &str) -> String {
    let p = dir.join("policy.toml");
    std::fs::write(
        &p,
        format!("[[repository]]\nname = \"only\"\nurl = \"{repo}\"\n\n[[job]]\nname = \"db\"\nkind = \"command\"\ncommand = \"echo hi\"\nrpo = \"1d\"\n"),
    )
    .unwrap();
    p.display().to_string()
}

#[test]
fn bad_months_and_missing_identity_are_clear_errors() {
    let f = Fixture::local();
    let policy = small_policy(f.dir.path(), &f.repo);
    for bad in ["2026-13", "10-2026", "2026-1", "october", "2026-10-01"] {
        let out = run(&["report", "--policy", &policy, "--identity", f.id(), "--month", bad]);
        assert_eq!(out.status.code(), Some(2), "--month {bad}: {}", stderr(&out));
        assert!(stderr(&out).contains("is not a month; use YYYY-MM"), "{}", stderr(&out));
    }
    let out = lifeboat_at(NOW, &["report", "--policy", &policy, "--identity", f.id(), "--month", "2026-12"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("2026-12 has not started yet"), "{}", stderr(&out));
    let out = run(&["report", "--policy", &policy, "--month", "2026-10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("needs the repository identity"), "{}", stderr(&out));
}

#[test]
fn a_month_without_records_says_so() {
    let f = Fixture::local();
    let policy = small_policy(f.dir.path(), &f.repo);
    let args = |fmt: &'static str| {
        ["report", "--policy", &policy, "--identity", f.id(), "--month", "2026-10", "--format", fmt]
    };
    let md = ok(&lifeboat_at(NOW, &args("md")));
    assert!(md.contains("**NO DATA**"), "{md}");
    assert!(md.contains("No records for October 2026"), "{md}");
    let html = ok(&lifeboat_at(NOW, &args("html")));
    let doc = scraper::Html::parse_document(&html);
    assert!(doc.errors.is_empty(), "{:?}", doc.errors);
    assert!(html.contains("NO DATA") && html.contains("No records for October 2026"), "{html}");
    let js: serde_json::Value = serde_json::from_str(&ok(&lifeboat_at(NOW, &args("json")))).unwrap();
    assert_eq!(js["verdict"], "no-data");
    assert_eq!(js["summary"]["backups_ok"], 0);
}
