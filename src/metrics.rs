//! Prometheus metrics (text exposition format, via `prometheus-client`) and
//! alerts (a Slack-compatible webhook).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::sync::atomic::AtomicU64;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabel {
    job: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegionLabel {
    job: String,
    region: String,
}

/// What one job's last run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct JobMetrics {
    pub job: String,
    pub last_success_timestamp: Option<f64>,
    pub last_run_timestamp: f64,
    pub duration_secs: f64,
    pub bytes_read: u64,
    pub bytes_stored_new: u64,
    pub bytes_new_raw: u64,
    pub failures_total: u64,
    pub success: bool,
    /// region → seconds the replica lagged behind before this run's replication.
    pub replication_lag_secs: Vec<(String, f64)>,
}

type G = Gauge<f64, AtomicU64>;

/// Encode jobs' metrics in the Prometheus text format.
pub fn encode(jobs: &[JobMetrics]) -> String {
    let mut reg = Registry::with_prefix("lifeboat");
    let fam = |reg: &mut Registry, name: &str, help: &str| {
        let f = Family::<JobLabel, G>::default();
        reg.register(name, help, f.clone());
        f
    };
    let last_success = fam(&mut reg, "last_success_timestamp_seconds", "Unix time of the job's last successful run");
    let last_run = fam(&mut reg, "last_run_timestamp_seconds", "Unix time of the job's last run");
    let duration = fam(&mut reg, "last_run_duration_seconds", "Duration of the last run");
    let read = fam(&mut reg, "last_run_bytes_read", "Bytes read from the source in the last run");
    let stored = fam(&mut reg, "last_run_bytes_stored_new", "New bytes stored (compressed, encrypted) by the last run");
    let dedup = fam(&mut reg, "last_run_dedup_ratio", "Bytes read divided by new raw bytes in the last run");
    let failures = fam(&mut reg, "failures", "Failed runs since the process started (CronJob mode: 0 or 1)");
    let up = fam(&mut reg, "last_run_success", "1 if the last run succeeded");
    let lag = Family::<RegionLabel, G>::default();
    reg.register(
        "replication_lag_seconds",
        "How far the replica lagged behind the primary before replication",
        lag.clone(),
    );
    for j in jobs {
        let l = JobLabel { job: j.job.clone() };
        if let Some(t) = j.last_success_timestamp {
            last_success.get_or_create(&l).set(t);
        }
        last_run.get_or_create(&l).set(j.last_run_timestamp);
        duration.get_or_create(&l).set(j.duration_secs);
        read.get_or_create(&l).set(j.bytes_read as f64);
        stored.get_or_create(&l).set(j.bytes_stored_new as f64);
        dedup.get_or_create(&l).set(if j.bytes_new_raw > 0 {
            j.bytes_read as f64 / j.bytes_new_raw as f64
        } else {
            0.0
        });
        failures.get_or_create(&l).set(j.failures_total as f64);
        up.get_or_create(&l).set(if j.success { 1.0 } else { 0.0 });
        for (region, secs) in &j.replication_lag_secs {
            lag.get_or_create(&RegionLabel { job: j.job.clone(), region: region.clone() }).set(*secs);
        }
    }
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

/// PUT the metrics to a Pushgateway (`/metrics/job/lifeboat/instance/<job>`).
pub async fn push(gateway: &str, job: &str, text: &str) -> Result<()> {
    let url = format!("{}/metrics/job/lifeboat/instance/{}", gateway.trim_end_matches('/'), job);
    let resp = reqwest::Client::new()
        .put(&url)
        .header("content-type", "text/plain; version=0.0.4")
        .body(text.to_string())
        .timeout(std::time::Duration::from_secs(15))
        .send()
        .await
        .map_err(|e| Error::Other(format!("pushgateway {gateway}: {e}")))?;
    if !resp.status().is_success() {
        return Err(Error::Other(format!("pushgateway {gateway} answered {}", resp.status())));
    }
    Ok(())
}

/// An alert, as sent to the webhook (Slack reads `text`; machines the rest).
#[derive(Debug, Clone, Serialize)]
pub struct Alert {
    pub text: String,
    pub job: String,
    pub kind: String,
    pub reason: String,
    pub time: chrono::DateTime<chrono::Utc>,
}

impl Alert {
    /// An alert raised now: `text` is what chat shows, `reason` the bare cause.
    pub fn now(job: &str, kind: &str, text: String, reason: String) -> Alert {
        Alert { text, job: job.to_string(), kind: kind.to_string(), reason, time: crate::clock::now() }
    }
}

pub async fn send_alert(webhook_url: &str, alert: &Alert) -> Result<()> {
    let resp = reqwest::Client::new()
        .post(webhook_url)
        .json(alert)
        .timeout(std::time::Duration::from_secs(15))
        .send()
        .await
        // The URL is a secret (Slack tokens live in it): never print it.
        .map_err(|e| Error::Other(format!("alert webhook: {}", e.without_url())))?;
    if !resp.status().is_success() {
        return Err(Error::Other(format!("alert webhook answered {}", resp.status())));
    }
    Ok(())
}
