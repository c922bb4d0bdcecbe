//! The HTML report: one self-contained file (inline CSS and SVG, no
//! scripts, no fonts, no links out), readable in five seconds from the top.

use std::fmt::Write;

use super::{ReportData, Verdict, fmt_bytes, fmt_secs, fmt_secs_f, fmt_time, svg};

/// Escape text for HTML (element content and quoted attributes). URLs in
/// text (an error naming an endpoint) are broken with a zero-width space so
/// that nothing in the file is a link a browser or a mail scanner follows.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out.replace("://", ":&#8203;//")
}

const CSS: &str = r#"
*{box-sizing:border-box}
body{margin:0;background:#f1f3f4;color:#202124;font:15px/1.45 "DejaVu Sans","Segoe UI",Roboto,Helvetica,Arial,sans-serif}
main{max-width:1200px;margin:0 auto;padding:20px 24px 40px}
.banner{display:flex;align-items:center;gap:32px;padding:22px 30px;border-radius:12px;color:#fff}
.banner.pass{background:#188038}.banner.warn{background:#b06000}.banner.fail{background:#c5221f}.banner.no-data{background:#5f6368}
.verdict{font-size:60px;font-weight:800;letter-spacing:1px;line-height:1;white-space:nowrap}
.banner.warn .verdict{font-size:40px}
.banner h1{margin:0 0 4px;font-size:24px}
.banner p{margin:0;opacity:.92}
.reasons{margin:10px 0 0;padding-left:20px}
.reasons li{margin:2px 0}
.tiles{display:grid;grid-template-columns:repeat(6,1fr);gap:12px;margin:16px 0}
.tile{background:#fff;border-radius:10px;padding:12px 16px;border-top:6px solid #dadce0}
.tile.t-good{border-top-color:#188038}.tile.t-bad{border-top-color:#c5221f}.tile.t-warn{border-top-color:#e37400}
.t-bad .num{color:#c5221f}.t-warn .num{color:#b06000}
.tile .lbl{font-size:13px;color:#5f6368;text-transform:uppercase;letter-spacing:.5px}
.tile .num{font-size:30px;font-weight:700;margin:2px 0}
.tile .sub{font-size:13px;color:#5f6368}
section{background:#fff;border-radius:10px;padding:16px 22px;margin:16px 0}
h2{font-size:18px;margin:0 0 10px}
table{border-collapse:collapse;width:100%;font-size:14px}
th{font-weight:600;color:#5f6368;border-bottom:2px solid #dadce0}
th,td{text-align:left;padding:6px 8px;vertical-align:top}
td{border-bottom:1px solid #eceff1}
.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.t{white-space:nowrap;font-variant-numeric:tabular-nums}
.ok{color:#188038;font-weight:600}.bad{color:#c5221f;font-weight:600}.warn{color:#b06000;font-weight:600}
.muted{color:#80868b}
.err{font-family:"DejaVu Sans Mono",monospace;font-size:12px;color:#5f6368;word-break:break-word}
svg{display:block;width:100%;height:auto}
footer{color:#80868b;font-size:12px;margin-top:18px}
"#;

/// The whole HTML document.
pub fn render_html(d: &ReportData) -> String {
    let mut h = String::with_capacity(64 * 1024);
    let class = match d.verdict {
        Verdict::Pass => "pass",
        Verdict::Warn => "warn",
        Verdict::Fail => "fail",
        Verdict::NoData => "no-data",
    };
    let _ = writeln!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>lifeboat DR report — {title}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>",
        title = esc(&d.title)
    );
    // 1. The verdict, for the five-second read.
    let _ = writeln!(
        h,
        "<header class=\"banner {class}\" id=\"verdict\" data-verdict=\"{class}\">\n<div class=\"verdict\">{}</div>\n<div>\n\
         <h1>DR drill report — {}</h1>\n<p>{} · records from {} ({}){}</p>",
        d.verdict.label(),
        esc(&d.title),
        period_text(d),
        esc(&d.records_from.name),
        esc(&d.records_from.region),
        if d.simulated_clock { " · simulated clock (rehearsal)" } else { "" }
    );
    if !d.reasons.is_empty() {
        h.push_str("<ul class=\"reasons\">\n");
        const SHOWN: usize = 6;
        for r in d.reasons.iter().take(SHOWN) {
            let _ = writeln!(h, "<li>{}</li>", esc(r));
        }
        if d.reasons.len() > SHOWN {
            let _ = writeln!(h, "<li>… and {} more (see the tables below)</li>", d.reasons.len() - SHOWN);
        }
        h.push_str("</ul>\n");
    }
    h.push_str("</div>\n</header>\n");
    tiles(&mut h, d);
    if d.verdict == Verdict::NoData {
        footer(&mut h, d);
        return h;
    }

    // 2. Charts.
    let _ = writeln!(
        h,
        "<section id=\"rto\">\n<h2>Recovery time: drills against RTO targets</h2>\n{}</section>",
        svg::rto_chart(d)
    );
    let _ =
        writeln!(h, "<section id=\"rpo\">\n<h2>Recovery points: RPO timeline</h2>\n{}</section>", svg::rpo_timeline(d));

    // 3. Tables.
    jobs_table(&mut h, d);
    failures_table(&mut h, d);
    verifications_table(&mut h, d);
    drills_table(&mut h, d);
    storage_table(&mut h, d);
    replication_table(&mut h, d);
    footer(&mut h, d);
    h
}

fn period_text(d: &ReportData) -> String {
    if d.month_complete {
        format!(
            "{} – {}",
            d.period_start.format("%Y-%m-%d"),
            (d.period_end - chrono::Duration::seconds(1)).format("%Y-%m-%d")
        )
    } else {
        format!("{} – now ({}), month in progress", d.period_start.format("%Y-%m-%d"), fmt_time(d.period_end))
    }
}

fn tile(h: &mut String, id: &str, class: &str, label: &str, num: &str, sub: &str) {
    let _ = writeln!(
        h,
        "<div class=\"tile {class}\" id=\"tile-{id}\"><div class=\"lbl\">{}</div><div class=\"num\">{}</div><div class=\"sub\">{}</div></div>",
        esc(label),
        esc(num),
        esc(sub)
    );
}

fn tiles(h: &mut String, d: &ReportData) {
    let s = &d.summary;
    h.push_str("<div class=\"tiles\" id=\"summary\">\n");
    let state = |bad: bool, none: bool| {
        if none {
            ""
        } else if bad {
            "t-bad"
        } else {
            "t-good"
        }
    };
    tile(
        h,
        "backups",
        if s.backups_failed > 0 { "t-warn" } else { state(false, s.backups_ok == 0) },
        "Backups",
        &format!("{} ok", s.backups_ok),
        &format!("{} failed", s.backups_failed),
    );
    let (vp, vf) = (s.verifications_passed, s.verifications_failed);
    tile(
        h,
        "verifications",
        state(vf > 0, vp + vf == 0),
        "Verifications",
        &format!("{vp}/{}", vp + vf),
        &if vp + vf == 0 { "none this month".to_string() } else { format!("passed · {vf} failed") },
    );
    let (dp, df) = (s.drills_passed, s.drills_failed);
    tile(
        h,
        "drills",
        state(df > 0, dp + df == 0),
        "Drills",
        &format!("{dp}/{}", dp + df),
        &if dp + df == 0 { "none this month".to_string() } else { format!("passed · {df} failed") },
    );
    tile(
        h,
        "rpo",
        state(s.jobs_meeting_rpo < s.jobs_with_rpo_target, s.jobs_with_rpo_target == 0),
        "RPO met",
        &format!("{}/{}", s.jobs_meeting_rpo, s.jobs_with_rpo_target),
        "jobs with a target",
    );
    tile(
        h,
        "rto",
        state(s.jobs_meeting_rto < s.jobs_with_rto_measured, s.jobs_with_rto_measured == 0),
        "RTO met",
        &format!("{}/{}", s.jobs_meeting_rto, s.jobs_with_rto_measured),
        "jobs measured by a drill",
    );
    let lag = s.max_replication_lag_secs.map(fmt_secs_f).unwrap_or_else(|| "–".into());
    tile(
        h,
        "lag",
        "",
        "Replication lag",
        &lag,
        if d.replication.is_empty() { "no replication" } else { "worst this month" },
    );
    h.push_str("</div>\n");
}

fn yes_no(v: Option<bool>, yes: &str, no: &str, none: &str) -> String {
    match v {
        Some(true) => format!("<span class=\"ok\">{yes}</span>"),
        Some(false) => format!("<span class=\"bad\">{no}</span>"),
        None => format!("<span class=\"muted\">{none}</span>"),
    }
}

fn opt_secs(v: Option<i64>) -> String {
    v.map(fmt_secs).unwrap_or_else(|| "–".into())
}

fn opt_secs_f(v: Option<f64>) -> String {
    v.map(fmt_secs_f).unwrap_or_else(|| "–".into())
}

fn jobs_table(h: &mut String, d: &ReportData) {
    h.push_str(
        "<section id=\"jobs\">\n<h2>Jobs</h2>\n<table>\n<thead><tr><th>Job</th><th>Tier</th><th class=\"n\">Backups ok</th>\
         <th class=\"n\">Failed</th><th class=\"n\">Achieved RPO</th><th class=\"n\">RPO target</th><th>RPO</th>\
         <th class=\"n\">Verified</th><th class=\"n\">Slowest drill</th><th class=\"n\">RTO target</th><th>RTO</th></tr></thead>\n<tbody>\n",
    );
    for j in &d.jobs {
        let _ = writeln!(
            h,
            "<tr data-job=\"{job}\" data-achieved-rpo-secs=\"{ach}\" data-rpo-ok=\"{rok}\" data-backups-ok=\"{bok}\" data-backups-failed=\"{bf}\">\
             <td><b>{job}</b>{gone}</td><td>{tier}</td><td class=\"n\">{bok}</td><td class=\"n\">{bf_html}</td>\
             <td class=\"n\">{ach_h}</td><td class=\"n\">{tgt}</td><td>{rpo}</td><td class=\"n\">{ver}</td>\
             <td class=\"n\">{rto}</td><td class=\"n\">{rto_t}</td><td>{rto_ok}</td></tr>",
            job = esc(&j.job),
            gone = if j.in_policy { "" } else { " <span class=\"muted\">(not in the policy)</span>" },
            tier = esc(j.tier.as_deref().unwrap_or("–")),
            ach = j.achieved_rpo_secs,
            rok = j.rpo_ok.map(|b| b.to_string()).unwrap_or_default(),
            bok = j.backups_ok,
            bf = j.backups_failed,
            bf_html = if j.backups_failed > 0 {
                format!("<span class=\"warn\">{}</span>", j.backups_failed)
            } else {
                "0".into()
            },
            ach_h = fmt_secs(j.achieved_rpo_secs),
            tgt = opt_secs(j.rpo_target_secs),
            rpo = yes_no(j.rpo_ok, "met", "MISSED", "no target"),
            ver = if j.verifications_passed + j.verifications_failed == 0 {
                "<span class=\"muted\">–</span>".to_string()
            } else {
                format!("{}/{}", j.verifications_passed, j.verifications_passed + j.verifications_failed)
            },
            rto = opt_secs_f(j.drill_rto_secs),
            rto_t = opt_secs(j.rto_target_secs),
            rto_ok = yes_no(j.rto_ok, "met", "MISSED", if j.rto_target_secs.is_some() { "not drilled" } else { "–" }),
        );
    }
    h.push_str("</tbody>\n</table>\n");
    let gaps: Vec<_> = d.jobs.iter().flat_map(|j| j.gaps_over_target.iter().map(move |g| (j, g))).collect();
    if !gaps.is_empty() {
        h.push_str(
            "<h2 style=\"margin-top:16px\">Gaps beyond the RPO target</h2>\n<table id=\"gaps\">\n<thead><tr><th>Job</th><th>Last point before</th><th>Next point</th><th class=\"n\">Gap</th><th class=\"n\">Target</th></tr></thead>\n<tbody>\n",
        );
        for (j, g) in gaps {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n bad\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&j.job),
                if g.from_period_start { format!("none before {}", fmt_time(g.from)) } else { fmt_time(g.from) },
                if g.to_period_end { format!("none yet ({})", fmt_time(g.to)) } else { fmt_time(g.to) },
                fmt_secs(g.secs),
                opt_secs(j.rpo_target_secs)
            );
        }
        h.push_str("</tbody>\n</table>\n");
    }
    h.push_str("</section>\n");
}

fn failures_table(h: &mut String, d: &ReportData) {
    let rows: Vec<_> = d.jobs.iter().flat_map(|j| j.failures.iter().map(move |f| (j, f))).collect();
    if rows.is_empty() {
        return;
    }
    h.push_str("<section id=\"failures\">\n<h2>Failed backup runs</h2>\n<table>\n<thead><tr><th>When</th><th>Job</th><th>Error</th></tr></thead>\n<tbody>\n");
    for (j, f) in rows {
        let _ = writeln!(
            h,
            "<tr><td class=\"t\">{}</td><td>{}</td><td class=\"err\">{}</td></tr>",
            fmt_time(f.time),
            esc(&j.job),
            esc(&f.error)
        );
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}

fn verifications_table(h: &mut String, d: &ReportData) {
    h.push_str("<section id=\"verifications\">\n<h2>Restore verifications</h2>\n");
    if d.verifications.is_empty() {
        h.push_str(
            "<p class=\"muted\">No restore was verified this month (<code>lifeboat verify</code>).</p>\n</section>\n",
        );
        return;
    }
    h.push_str("<table>\n<thead><tr><th>When</th><th>Job</th><th>Snapshot</th><th>From</th><th class=\"n\">Restore</th><th class=\"n\">Total</th><th>Checks</th><th>Result</th></tr></thead>\n<tbody>\n");
    for v in &d.verifications {
        let checks = if v.failed_checks.is_empty() {
            format!("{} passed", v.checks)
        } else {
            format!("failed: {}", v.failed_checks.join(", "))
        };
        let _ = writeln!(
            h,
            "<tr><td class=\"t\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td>{}{}</td></tr>",
            fmt_time(v.time),
            esc(&v.job),
            esc(&v.snapshot.as_deref().map(|s| s.chars().take(8).collect::<String>()).unwrap_or_else(|| "–".into())),
            esc(&format!(
                "{}{}",
                v.repository.as_deref().unwrap_or("–"),
                v.region.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
            )),
            opt_secs_f(v.restore_secs),
            opt_secs_f(v.total_secs),
            esc(&checks),
            yes_no(Some(v.ok), "passed", "FAILED", ""),
            v.error.as_deref().map(|e| format!("<div class=\"err\">{}</div>", esc(e))).unwrap_or_default()
        );
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}

fn drills_table(h: &mut String, d: &ReportData) {
    h.push_str("<section id=\"drills\">\n<h2>Drills</h2>\n");
    if d.drills.is_empty() {
        h.push_str("<p class=\"muted\">No DR drill ran this month (<code>lifeboat drill</code>).</p>\n</section>\n");
        return;
    }
    h.push_str("<table>\n<thead><tr><th>Finished</th><th>Scenario</th><th>Job</th><th>Restored from</th><th class=\"n\">RTO</th><th class=\"n\">Target</th><th class=\"n\">Data loss (RPO)</th><th class=\"n\">Target</th><th>Result</th></tr></thead>\n<tbody>\n");
    for dr in &d.drills {
        let from = format!(
            "{}{}",
            dr.repository.as_deref().unwrap_or("–"),
            dr.region.as_deref().map(|r| format!(" ({r})")).unwrap_or_default()
        );
        let scenario = format!("{}{}", dr.scenario, dr.kind.as_deref().map(|k| format!(" · {k}")).unwrap_or_default());
        if dr.jobs.is_empty() {
            let _ = writeln!(
                h,
                "<tr><td class=\"t\">{}</td><td>{}</td><td class=\"muted\">–</td><td>{}</td><td></td><td></td><td></td><td></td><td>{}</td></tr>",
                fmt_time(dr.finished),
                esc(&scenario),
                esc(&from),
                yes_no(Some(dr.ok), "passed", "FAILED", "")
            );
        }
        for j in &dr.jobs {
            let _ = writeln!(
                h,
                "<tr><td class=\"t\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}{}</td></tr>",
                fmt_time(dr.finished),
                esc(&scenario),
                esc(&j.job),
                esc(&from),
                opt_secs_f(j.rto_secs),
                opt_secs_f(j.rto_target_secs),
                opt_secs_f(j.rpo_secs),
                opt_secs_f(j.rpo_target_secs),
                yes_no(Some(j.ok && j.rto_ok != Some(false) && j.rpo_ok != Some(false)), "passed", "FAILED", ""),
                j.error.as_deref().map(|e| format!("<div class=\"err\">{}</div>", esc(e))).unwrap_or_default()
            );
        }
    }
    h.push_str("</tbody>\n</table>\n</section>\n");
}

fn storage_table(h: &mut String, d: &ReportData) {
    h.push_str("<section id=\"storage\">\n<h2>Storage per region</h2>\n<table>\n<thead><tr><th>Repository</th><th>Region</th><th class=\"n\">Snapshots</th><th class=\"n\">Logical</th><th class=\"n\">Stored</th><th class=\"n\">of which WAL</th><th class=\"n\">Dedup ratio</th></tr></thead>\n<tbody>\n");
    for s in &d.storage {
        let name = format!("{}{}", s.repository, if s.primary { " (primary)" } else { "" });
        if !s.reachable {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{}</td><td colspan=\"5\"><span class=\"bad\">unreachable</span> <span class=\"err\">{}</span></td></tr>",
                esc(&name),
                esc(&s.region),
                esc(s.error.as_deref().unwrap_or(""))
            );
            continue;
        }
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            esc(&name),
            esc(&s.region),
            s.snapshots,
            fmt_bytes(s.logical_bytes),
            fmt_bytes(s.stored_bytes),
            fmt_bytes(s.wal_bytes),
            s.dedup_ratio.map(|r| format!("{r:.1}×")).unwrap_or_else(|| "–".into())
        );
    }
    h.push_str("</tbody>\n</table>\n<p class=\"muted\">Measured when the report was made. Dedup ratio: logical snapshot bytes over the bytes their packs, index and manifests occupy (compression included; WAL is not deduplicated).</p>\n</section>\n");
}

fn replication_table(h: &mut String, d: &ReportData) {
    h.push_str("<section id=\"replication\">\n<h2>Replication</h2>\n");
    if d.replication.is_empty() {
        h.push_str("<p class=\"muted\">No replication ran this month.</p>\n</section>\n");
        return;
    }
    h.push_str("<table>\n<thead><tr><th>Replica</th><th>Region</th><th class=\"n\">Runs</th><th class=\"n\">Copied</th><th class=\"n\">Worst lag</th><th class=\"n\">Last lag</th><th>Last run</th></tr></thead>\n<tbody>\n");
    for r in &d.replication {
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&r.replica),
            esc(&r.region),
            r.runs,
            fmt_bytes(r.bytes_copied),
            fmt_secs_f(r.max_lag_secs),
            opt_secs_f(r.last_lag_secs),
            r.last_time.map(fmt_time).unwrap_or_else(|| "–".into())
        );
    }
    h.push_str("</tbody>\n</table>\n<p class=\"muted\">Lag: before each run, the age of the oldest snapshot the replica did not have yet.</p>\n</section>\n");
}

fn footer(h: &mut String, d: &ReportData) {
    let _ = writeln!(
        h,
        "<footer>Generated {} by lifeboat {} from the records in repository {}{}. Format {}.{}</footer>\n</main>\n</body>\n</html>",
        fmt_time(d.generated_at),
        env!("CARGO_PKG_VERSION"),
        esc(&d.records_from.name),
        if d.records_from.primary { " (primary)" } else { "" },
        esc(&d.format),
        if d.unreadable_records > 0 {
            format!(" {} record(s) could not be read and were skipped.", d.unreadable_records)
        } else {
            String::new()
        }
    );
}
