//! Hand-written inline SVG charts: measured RTO against target per job, and
//! an RPO timeline per job over the month. No library, no script: the
//! report must render the same in a mail client, a browser and a PDF.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::html::esc;
use super::{ReportData, fmt_secs, fmt_secs_f};

const GREEN: &str = "#188038";
const RED: &str = "#c5221f";
const GREY: &str = "#80868b";
const INK: &str = "#202124";
const FONT: &str = "font-family=\"DejaVu Sans,Segoe UI,Roboto,Helvetica,Arial,sans-serif\"";

const W: f64 = 1100.0;
const LEFT: f64 = 190.0;
const RIGHT: f64 = 200.0;

/// A tick step (seconds) giving at most about six ticks up to `max`.
fn tick_step(max: f64) -> f64 {
    const STEPS: [f64; 17] = [
        1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0,
        86400.0,
    ];
    STEPS.iter().copied().find(|s| max / s <= 6.0).unwrap_or_else(|| (max / 6.0 / 86400.0).ceil() * 86400.0)
}

/// Bars of the slowest measured recovery per job, a target marker, green
/// within target and red beyond.
pub fn rto_chart(d: &ReportData) -> String {
    let rows: Vec<_> = d.jobs.iter().filter(|j| j.rto_target_secs.is_some() || j.drill_rto_secs.is_some()).collect();
    let row_h = 38.0;
    let top = 34.0;
    let plot = W - LEFT - RIGHT;
    let height = top + row_h * rows.len().max(1) as f64 + 34.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg id=\"rto-chart\" viewBox=\"0 0 {W} {height}\" role=\"img\" aria-label=\"Measured RTO against target per job\" {FONT} font-size=\"13\">"
    );
    // Legend.
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"8\" width=\"14\" height=\"12\" fill=\"{GREEN}\"/><text x=\"{}\" y=\"19\" fill=\"{INK}\">within target</text>\
         <rect x=\"{}\" y=\"8\" width=\"14\" height=\"12\" fill=\"{RED}\"/><text x=\"{}\" y=\"19\" fill=\"{INK}\">over target</text>\
         <rect x=\"{}\" y=\"5\" width=\"4\" height=\"18\" fill=\"{INK}\"/><text x=\"{}\" y=\"19\" fill=\"{INK}\">RTO target</text>",
        LEFT + 20.0,
        LEFT + 130.0,
        LEFT + 150.0,
        LEFT + 250.0,
        LEFT + 262.0
    );
    if rows.is_empty() {
        let _ = writeln!(
            s,
            "<text x=\"{LEFT}\" y=\"{}\" fill=\"{GREY}\">No job has an RTO target and no drill measured one.</text>\n</svg>",
            top + 24.0
        );
        return s;
    }
    let max = rows
        .iter()
        .flat_map(|j| [j.rto_target_secs.map(|t| t as f64), j.drill_rto_secs])
        .flatten()
        .fold(60.0_f64, f64::max)
        * 1.12;
    let x = |v: f64| LEFT + (v / max).min(1.0) * plot;
    let bottom = top + row_h * rows.len() as f64;
    // Grid and axis.
    let step = tick_step(max);
    let mut v = 0.0;
    while v <= max {
        let _ = writeln!(
            s,
            "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{bottom}\" stroke=\"#e8eaed\"/><text x=\"{0:.1}\" y=\"{1}\" text-anchor=\"middle\" fill=\"{GREY}\" font-size=\"12\">{2}</text>",
            x(v),
            bottom + 18.0,
            fmt_secs(v as i64)
        );
        v += step;
    }
    for (i, j) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let mid = y + row_h / 2.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{INK}\" font-weight=\"600\">{}</text>",
            LEFT - 12.0,
            mid + 4.5,
            esc(&j.job)
        );
        match j.drill_rto_secs {
            Some(m) => {
                let colour = if j.rto_ok == Some(true) { GREEN } else { RED };
                let _ = writeln!(
                    s,
                    "<rect x=\"{LEFT}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{:.1}\" rx=\"3\" fill=\"{colour}\"><title>{}: slowest drill recovery {}</title></rect>",
                    y + 8.0,
                    (x(m) - LEFT).max(2.0),
                    row_h - 16.0,
                    esc(&j.job),
                    fmt_secs_f(m)
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "<text x=\"{}\" y=\"{:.1}\" fill=\"{GREY}\" font-style=\"italic\">not drilled this month</text>",
                    LEFT + 8.0,
                    mid + 4.5
                );
            }
        }
        if let Some(t) = j.rto_target_secs {
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"4\" height=\"{:.1}\" fill=\"{INK}\"><title>target {}</title></rect>",
                x(t as f64) - 2.0,
                y + 3.0,
                row_h - 6.0,
                fmt_secs(t)
            );
        }
        let (text, colour) = match (j.drill_rto_secs, j.rto_target_secs) {
            (Some(m), Some(t)) => (
                format!("{} / target {}", fmt_secs_f(m), fmt_secs(t)),
                if j.rto_ok == Some(true) { GREEN } else { RED },
            ),
            (Some(m), None) => (format!("{} / no target", fmt_secs_f(m)), INK),
            (None, Some(t)) => (format!("– / target {}", fmt_secs(t)), GREY),
            (None, None) => (String::new(), GREY),
        };
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" fill=\"{colour}\" font-weight=\"600\">{}</text>",
            W - RIGHT + 14.0,
            mid + 4.5,
            esc(&text)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// One row per job across the month: the green track while recoverable
/// points kept coming, red over every gap longer than the RPO target, a dot
/// per successful backup, a cross per failed run, grey after "now".
pub fn rpo_timeline(d: &ReportData) -> String {
    let row_h = 48.0;
    let top = 40.0;
    let plot = W - LEFT - RIGHT;
    let rows = d.jobs.len().max(1) as f64;
    let height = top + row_h * rows + 44.0;
    let month_start = d.period_start;
    let month_end = month_start_next(d);
    let span = (month_end - month_start).num_seconds().max(1) as f64;
    let x = |t: DateTime<Utc>| {
        let off = (t - month_start).num_seconds() as f64;
        LEFT + (off / span).clamp(0.0, 1.0) * plot
    };
    let bottom = top + row_h * rows;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg id=\"rpo-timeline\" viewBox=\"0 0 {W} {height}\" role=\"img\" aria-label=\"Recoverable points per job over the month\" {FONT} font-size=\"13\">"
    );
    // Day grid: a line per day, a label every few days.
    let days = (span / 86400.0).round() as i64;
    for day in 0..=days {
        let t = month_start + chrono::Duration::days(day);
        let xx = x(t);
        let _ = writeln!(s, "<line x1=\"{xx:.1}\" y1=\"{top}\" x2=\"{xx:.1}\" y2=\"{bottom}\" stroke=\"#eceff1\"/>");
        let dom = day + 1;
        if day < days && (dom == 1 || dom % 5 == 0) {
            let _ = writeln!(
                s,
                "<text x=\"{xx:.1}\" y=\"{}\" fill=\"{GREY}\" font-size=\"12\">{}</text>",
                top - 8.0,
                t.format("%b %-d")
            );
        }
    }
    if d.period_end < month_end {
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{top}\" width=\"{:.1}\" height=\"{}\" fill=\"#f1f3f4\"/><text x=\"{:.1}\" y=\"{}\" fill=\"{GREY}\" font-size=\"12\">now</text>",
            x(d.period_end),
            x(month_end) - x(d.period_end),
            bottom - top,
            x(d.period_end) + 3.0,
            top - 8.0
        );
    }
    if d.jobs.is_empty() {
        let _ = writeln!(s, "<text x=\"{LEFT}\" y=\"{}\" fill=\"{GREY}\">No jobs.</text>", top + 28.0);
    }
    for (i, j) in d.jobs.iter().enumerate() {
        let y = top + row_h * i as f64;
        let mid = y + row_h / 2.0 - 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{INK}\" font-weight=\"600\">{}</text>",
            LEFT - 12.0,
            mid + 4.5,
            esc(&j.job)
        );
        // The track: recoverable from the first point (or the month start) until the period end.
        let track_from = if j.recoverable_at_start { Some(month_start) } else { j.first_point };
        if let Some(from) = track_from {
            let _ = writeln!(
                s,
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"8\" rx=\"4\" fill=\"#a8dab5\"/>",
                x(from),
                mid - 4.0,
                (x(d.period_end) - x(from)).max(0.0)
            );
        }
        for g in &j.gaps_over_target {
            let (a, b) = (x(g.from), x(g.to));
            let _ = writeln!(
                s,
                "<rect x=\"{a:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"14\" rx=\"3\" fill=\"{RED}\"><title>{}: no new recoverable point for {} ({} → {})</title></rect>",
                mid - 7.0,
                (b - a).max(2.0),
                esc(&j.job),
                fmt_secs(g.secs),
                g.from.format("%b %-d %H:%M"),
                g.to.format("%b %-d %H:%M")
            );
        }
        // Dots; beyond a few hundred they would merge into a bar anyway.
        if j.backup_points.len() <= 400 {
            for p in &j.backup_points {
                let _ = writeln!(
                    s,
                    "<circle cx=\"{:.1}\" cy=\"{mid:.1}\" r=\"3.5\" fill=\"{GREEN}\" stroke=\"#fff\" stroke-width=\"1\"/>",
                    x(*p)
                );
            }
        }
        for f in &j.failures {
            let (cx, cy) = (x(f.time), mid + 14.0);
            let _ = writeln!(
                s,
                "<path d=\"M{:.1} {:.1}L{:.1} {:.1}M{:.1} {:.1}L{:.1} {:.1}\" stroke=\"{RED}\" stroke-width=\"2\"><title>backup failed {}</title></path>",
                cx - 4.0,
                cy - 4.0,
                cx + 4.0,
                cy + 4.0,
                cx - 4.0,
                cy + 4.0,
                cx + 4.0,
                cy - 4.0,
                f.time.format("%b %-d %H:%M")
            );
        }
        let colour = match j.rpo_ok {
            Some(true) => GREEN,
            Some(false) => RED,
            None => INK,
        };
        let target = j.rpo_target_secs.map(|t| format!("target {}", fmt_secs(t))).unwrap_or_else(|| "no target".into());
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" fill=\"{colour}\" font-weight=\"600\">worst gap {}</text><text x=\"{}\" y=\"{:.1}\" fill=\"{GREY}\" font-size=\"12\">{}{}</text>",
            W - RIGHT + 14.0,
            mid + 1.0,
            fmt_secs(j.achieved_rpo_secs),
            W - RIGHT + 14.0,
            mid + 16.0,
            esc(&target),
            if j.wal_points > 0 { " · WAL" } else { "" }
        );
    }
    // Legend.
    let ly = bottom + 26.0;
    let _ = writeln!(
        s,
        "<rect x=\"{LEFT}\" y=\"{:.1}\" width=\"22\" height=\"8\" rx=\"4\" fill=\"#a8dab5\"/><text x=\"{}\" y=\"{ly:.1}\" fill=\"{INK}\">recoverable</text>\
         <circle cx=\"{}\" cy=\"{:.1}\" r=\"3.5\" fill=\"{GREEN}\"/><text x=\"{}\" y=\"{ly:.1}\" fill=\"{INK}\">backup</text>\
         <path d=\"M{} {:.1}l8 8m-8 0l8 -8\" stroke=\"{RED}\" stroke-width=\"2\"/><text x=\"{}\" y=\"{ly:.1}\" fill=\"{INK}\">failed run</text>\
         <rect x=\"{}\" y=\"{:.1}\" width=\"22\" height=\"12\" rx=\"3\" fill=\"{RED}\"/><text x=\"{}\" y=\"{ly:.1}\" fill=\"{INK}\">gap longer than the RPO target</text>",
        ly - 8.0,
        LEFT + 28.0,
        LEFT + 135.0,
        ly - 4.0,
        LEFT + 145.0,
        LEFT + 215.0,
        ly - 8.0,
        LEFT + 230.0,
        LEFT + 320.0,
        ly - 10.0,
        LEFT + 348.0
    );
    s.push_str("</svg>\n");
    s
}

/// The month's end (the period may stop earlier, at "now").
fn month_start_next(d: &ReportData) -> DateTime<Utc> {
    d.month.parse::<super::Month>().map(|m| m.end()).unwrap_or(d.period_end)
}
