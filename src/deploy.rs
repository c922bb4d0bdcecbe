//! `lifeboat deploy render`: one Kubernetes CronJob per scheduled policy job,
//! plus the ServiceAccount they run as.
//!
//! The CronJobs are hardened by default: `concurrencyPolicy: Forbid`, a
//! starting deadline, an active deadline, a small backoff limit, non-root,
//! read-only root filesystem, no capabilities, resource requests and limits,
//! secrets mounted from a Secret (never in the manifest), and a
//! ServiceAccount annotated for cloud workload identity (IRSA / GKE / Azure).

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::policy::Policy;

#[derive(Debug, Clone)]
pub struct RenderOptions {
    pub image: String,
    pub namespace: String,
    /// Secret holding `write.key` and the jobs' connection URLs.
    pub secret: String,
    /// ConfigMap holding `policy.toml`.
    pub config_map: String,
    /// Workload identity annotation, e.g. `eks.amazonaws.com/role-arn=arn:aws:iam::…:role/lifeboat`.
    pub service_account_annotations: Vec<(String, String)>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            image: "ghcr.io/acme/lifeboat:0.1.0".into(),
            namespace: "lifeboat".into(),
            secret: "lifeboat-secrets".into(),
            config_map: "lifeboat-policy".into(),
            service_account_annotations: vec![],
        }
    }
}

fn k8s_name(job: &str) -> String {
    let s: String = job.to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    format!("lifeboat-{}", s.trim_matches('-'))
}

/// Render manifests (as JSON values; serialise as YAML documents).
pub fn render(policy: &Policy, o: &RenderOptions) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    let annotations: serde_json::Map<String, Value> =
        o.service_account_annotations.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    docs.push(json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "lifeboat", "namespace": o.namespace, "annotations": annotations,
                     "labels": {"app.kubernetes.io/name": "lifeboat"}},
        "automountServiceAccountToken": true,
    }));
    // A kubernetes job exports the cluster through the API: read-only access to every type
    // (what it may not list is skipped with a warning, so grant what should be backed up).
    if policy.jobs.iter().any(|j| j.kind == crate::policy::JobKind::Kubernetes && j.kubeconfig.is_none()) {
        let labels = json!({"app.kubernetes.io/name": "lifeboat"});
        docs.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "lifeboat-read", "labels": labels},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list"]}],
        }));
        docs.push(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("lifeboat-read-{}", o.namespace), "labels": labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "lifeboat-read"},
            "subjects": [{"kind": "ServiceAccount", "name": "lifeboat", "namespace": o.namespace}],
        }));
    }
    for job in &policy.jobs {
        let Some(schedule) = &job.schedule else { continue };
        if schedule.split_whitespace().count() != 5 {
            return Err(Error::Policy(format!(
                "job {:?}: Kubernetes CronJobs take 5-field schedules; {schedule:?} is not one",
                job.name
            )));
        }
        // Secret env vars the job's url refers to come from the Secret.
        let mut env = vec![json!({"name": "LIFEBOAT_WRITE_KEY_FILE", "value": "/var/run/secrets/lifeboat/write.key"})];
        for r in [&job.url].into_iter().flatten() {
            if let Some(var) = r.strip_prefix("env:") {
                env.push(json!({"name": var, "valueFrom": {"secretKeyRef": {"name": o.secret, "key": var}}}));
            }
        }
        if let Some(alerts) = &policy.alerts
            && let Some(var) = alerts.webhook.as_deref().and_then(|w| w.strip_prefix("env:"))
        {
            env.push(
                json!({"name": var, "valueFrom": {"secretKeyRef": {"name": o.secret, "key": var, "optional": true}}}),
            );
        }
        // A run that outlives its RTO target several times over is stuck.
        let deadline = job
            .rto
            .as_deref()
            .and_then(|r| crate::schedule::parse_duration(r).ok())
            .map(|d| (d.num_seconds() * 4).clamp(1800, 6 * 3600))
            .unwrap_or(6 * 3600);
        let mut spec = json!({
            "schedule": schedule,
            "concurrencyPolicy": "Forbid",
            "startingDeadlineSeconds": 600,
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 5,
            "jobTemplate": {"spec": {
                "backoffLimit": 2,
                "activeDeadlineSeconds": deadline,
                "template": {
                    "metadata": {"labels": {"app.kubernetes.io/name": "lifeboat", "lifeboat.dev/job": job.name}},
                    "spec": {
                        "serviceAccountName": "lifeboat",
                        "restartPolicy": "Never",
                        "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532,
                                            "seccompProfile": {"type": "RuntimeDefault"}},
                        "containers": [{
                            "name": "lifeboat",
                            "image": o.image,
                            "args": ["run", "--policy", "/etc/lifeboat/policy.toml", job.name, "--log-format", "json"],
                            "env": env,
                            "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                                                "capabilities": {"drop": ["ALL"]}},
                            "resources": {"requests": {"cpu": "500m", "memory": "256Mi"},
                                          "limits": {"cpu": "2", "memory": "1Gi"}},
                            "volumeMounts": [
                                {"name": "policy", "mountPath": "/etc/lifeboat", "readOnly": true},
                                {"name": "secrets", "mountPath": "/var/run/secrets/lifeboat", "readOnly": true},
                                {"name": "tmp", "mountPath": "/tmp"}
                            ]
                        }],
                        "volumes": [
                            {"name": "policy", "configMap": {"name": o.config_map}},
                            {"name": "secrets", "secret": {"secretName": o.secret, "defaultMode": 256,
                                                           "items": [{"key": "write.key", "path": "write.key"}]}},
                            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}
                        ]
                    }
                }
            }}
        });
        if let Some(tz) = &job.timezone {
            spec["timeZone"] = json!(tz);
        }
        docs.push(json!({
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": k8s_name(&job.name), "namespace": o.namespace,
                         "labels": {"app.kubernetes.io/name": "lifeboat", "lifeboat.dev/job": job.name}},
            "spec": spec,
        }));
    }
    Ok(docs)
}

/// Multi-document YAML.
pub fn to_yaml(docs: &[Value]) -> Result<String> {
    let mut out = String::from("# Rendered by `lifeboat deploy render`; do not edit by hand.\n");
    for d in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(d).map_err(|e| Error::Other(e.to_string()))?);
    }
    Ok(out)
}
