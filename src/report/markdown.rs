//! The Markdown report: a summary line and tables, for pasting into a ticket.

use std::fmt::Write;

use super::{ReportData, Verdict, fmt_bytes, fmt_secs, fmt_secs_f, fmt_time};

/// Text safe inside a table cell: no pipe, no line break, no markup surprises.
fn cell(s: &str) -> String {
    s.replace('\\', "\\\\").replace('|', "\\|").replace(['\n', '\r'], " ").replace('`', "'")
}

fn mark(v: Option<bool>, none: &str) -> String {
    match v {
        Some(true) => "✅ met".into(),
        Some(false) => "❌ **missed**".into(),
        None => none.into(),
    }
}

fn opt(v: Option<String>) -> String {
    v.unwrap_or_else(|| "–".into())
}

pub fn render_markdown(d: &ReportData) -> String {
    let s = &d.summary;
    let mut m = String::new();
    let _ = writeln!(m, "# lifeboat DR report — {}\n", d.title);
    let _ = writeln!(
        m,
        "**{}** · backups {} ok / {} failed · verifications {} passed / {} failed · drills {} passed / {} failed · RPO met by {} of {} jobs · RTO met by {} of {} drilled jobs\n",
        d.verdict.label(),
        s.backups_ok,
        s.backups_failed,
        s.verifications_passed,
        s.verifications_failed,
        s.drills_passed,
        s.drills_failed,
        s.jobs_meeting_rpo,
        s.jobs_with_rpo_target,
        s.jobs_meeting_rto,
        s.jobs_with_rto_measured
    );
    let _ = writeln!(
        m,
        "Period {} – {}{}; records from repository `{}` ({}); generated {}{}.\n",
        fmt_time(d.period_start),
        fmt_time(d.period_end),
        if d.month_complete { "" } else { " (month in progress)" },
        cell(&d.records_from.name),
        cell(&d.records_from.region),
        fmt_time(d.generated_at),
        if d.simulated_clock { " on a simulated clock (rehearsal)" } else { "" }
    );
    for r in &d.reasons {
        let _ = writeln!(m, "- {}", cell(r));
    }
    if !d.reasons.is_empty() {
        m.push('\n');
    }
    if d.verdict == Verdict::NoData {
        return m;
    }

    m.push_str("## Jobs\n\n| Job | Tier | Backups ok | Failed | Achieved RPO | RPO target | RPO | Verified | Slowest drill | RTO target | RTO |\n|---|---|--:|--:|--:|--:|---|--:|--:|--:|---|\n");
    for j in &d.jobs {
        let _ = writeln!(
            m,
            "| {} | {} | {} | {} | {} ({} s) | {} | {} | {} | {} | {} | {} |",
            cell(&j.job),
            cell(j.tier.as_deref().unwrap_or("–")),
            j.backups_ok,
            j.backups_failed,
            fmt_secs(j.achieved_rpo_secs),
            j.achieved_rpo_secs,
            opt(j.rpo_target_secs.map(fmt_secs)),
            mark(j.rpo_ok, "no target"),
            if j.verifications_passed + j.verifications_failed == 0 {
                "–".to_string()
            } else {
                format!("{}/{}", j.verifications_passed, j.verifications_passed + j.verifications_failed)
            },
            opt(j.drill_rto_secs.map(fmt_secs_f)),
            opt(j.rto_target_secs.map(fmt_secs)),
            mark(j.rto_ok, if j.rto_target_secs.is_some() { "not drilled" } else { "–" })
        );
    }
    m.push('\n');

    let gaps: Vec<_> = d.jobs.iter().flat_map(|j| j.gaps_over_target.iter().map(move |g| (j, g))).collect();
    if !gaps.is_empty() {
        m.push_str("## Gaps beyond the RPO target\n\n| Job | From | To | Gap | Target |\n|---|---|---|--:|--:|\n");
        for (j, g) in gaps {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} ({} s) | {} |",
                cell(&j.job),
                if g.from_period_start { format!("{} (no earlier point)", fmt_time(g.from)) } else { fmt_time(g.from) },
                if g.to_period_end { format!("{} (no point yet)", fmt_time(g.to)) } else { fmt_time(g.to) },
                fmt_secs(g.secs),
                g.secs,
                opt(j.rpo_target_secs.map(fmt_secs))
            );
        }
        m.push('\n');
    }

    let failures: Vec<_> = d.jobs.iter().flat_map(|j| j.failures.iter().map(move |f| (j, f))).collect();
    if !failures.is_empty() {
        m.push_str("## Failed backup runs\n\n| When | Job | Error |\n|---|---|---|\n");
        for (j, f) in failures {
            let _ = writeln!(m, "| {} | {} | {} |", fmt_time(f.time), cell(&j.job), cell(&f.error));
        }
        m.push('\n');
    }

    m.push_str("## Restore verifications\n\n");
    if d.verifications.is_empty() {
        m.push_str("None this month.\n\n");
    } else {
        m.push_str("| When | Job | Snapshot | From | Total | Result |\n|---|---|---|---|--:|---|\n");
        for v in &d.verifications {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} |",
                fmt_time(v.time),
                cell(&v.job),
                cell(
                    &v.snapshot.as_deref().map(|s| s.chars().take(8).collect::<String>()).unwrap_or_else(|| "–".into())
                ),
                cell(v.repository.as_deref().unwrap_or("–")),
                opt(v.total_secs.map(fmt_secs_f)),
                if v.ok {
                    "✅ passed".to_string()
                } else {
                    format!("❌ **failed** {}", cell(v.error.as_deref().unwrap_or(&v.failed_checks.join(", "))))
                }
            );
        }
        m.push('\n');
    }

    m.push_str("## Drills\n\n");
    if d.drills.is_empty() {
        m.push_str("None this month.\n\n");
    } else {
        m.push_str("| Finished | Scenario | Job | From | RTO | Target | Data loss | Target | Result |\n|---|---|---|---|--:|--:|--:|--:|---|\n");
        for dr in &d.drills {
            for j in &dr.jobs {
                let ok = j.ok && j.rto_ok != Some(false) && j.rpo_ok != Some(false);
                let _ = writeln!(
                    m,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    fmt_time(dr.finished),
                    cell(&dr.scenario),
                    cell(&j.job),
                    cell(dr.repository.as_deref().unwrap_or("–")),
                    opt(j.rto_secs.map(fmt_secs_f)),
                    opt(j.rto_target_secs.map(fmt_secs_f)),
                    opt(j.rpo_secs.map(fmt_secs_f)),
                    opt(j.rpo_target_secs.map(fmt_secs_f)),
                    if ok {
                        "✅ passed".to_string()
                    } else {
                        format!("❌ **failed** {}", cell(j.error.as_deref().unwrap_or("")))
                    }
                );
            }
            if dr.jobs.is_empty() {
                let _ = writeln!(
                    m,
                    "| {} | {} | – | {} | | | | | {} |",
                    fmt_time(dr.finished),
                    cell(&dr.scenario),
                    cell(dr.repository.as_deref().unwrap_or("–")),
                    if dr.ok { "✅ passed" } else { "❌ **failed**" }
                );
            }
        }
        m.push('\n');
    }

    m.push_str("## Storage per region\n\n| Repository | Region | Snapshots | Logical | Stored | WAL | Dedup ratio |\n|---|---|--:|--:|--:|--:|--:|\n");
    for s in &d.storage {
        let name = format!("{}{}", s.repository, if s.primary { " (primary)" } else { "" });
        if s.reachable {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} | {} |",
                cell(&name),
                cell(&s.region),
                s.snapshots,
                fmt_bytes(s.logical_bytes),
                fmt_bytes(s.stored_bytes),
                fmt_bytes(s.wal_bytes),
                s.dedup_ratio.map(|r| format!("{r:.1}×")).unwrap_or_else(|| "–".into())
            );
        } else {
            let _ = writeln!(
                m,
                "| {} | {} | unreachable: {} | | | | |",
                cell(&name),
                cell(&s.region),
                cell(s.error.as_deref().unwrap_or(""))
            );
        }
    }
    m.push('\n');

    m.push_str("## Replication\n\n");
    if d.replication.is_empty() {
        m.push_str("None this month.\n");
    } else {
        m.push_str("| Replica | Region | Runs | Copied | Worst lag | Last lag |\n|---|---|--:|--:|--:|--:|\n");
        for r in &d.replication {
            let _ = writeln!(
                m,
                "| {} | {} | {} | {} | {} | {} |",
                cell(&r.replica),
                cell(&r.region),
                r.runs,
                fmt_bytes(r.bytes_copied),
                fmt_secs_f(r.max_lag_secs),
                opt(r.last_lag_secs.map(fmt_secs_f))
            );
        }
    }
    m
}
