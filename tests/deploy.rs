//! Every rendered and checked-in Kubernetes manifest parses into the
//! `k8s-openapi` types, and the CronJobs carry the hardening we promise.

mod common;

use common::*;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};

fn check_docs(yaml: &str, what: &str) -> Vec<CronJob> {
    let mut cronjobs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v.is_null() {
            continue;
        }
        let kind = v["kind"].as_str().unwrap_or_else(|| panic!("{what}: document without kind"));
        match kind {
            "CronJob" => {
                cronjobs.push(serde_yaml::from_value::<CronJob>(v).unwrap_or_else(|e| panic!("{what}: CronJob: {e}")))
            }
            "ServiceAccount" => {
                serde_yaml::from_value::<ServiceAccount>(v).unwrap_or_else(|e| panic!("{what}: ServiceAccount: {e}"));
            }
            "Namespace" => {
                serde_yaml::from_value::<Namespace>(v).unwrap_or_else(|e| panic!("{what}: Namespace: {e}"));
            }
            "ClusterRole" => {
                serde_yaml::from_value::<ClusterRole>(v).unwrap_or_else(|e| panic!("{what}: ClusterRole: {e}"));
            }
            "ClusterRoleBinding" => {
                let b = serde_yaml::from_value::<ClusterRoleBinding>(v)
                    .unwrap_or_else(|e| panic!("{what}: ClusterRoleBinding: {e}"));
                assert_eq!(b.subjects.unwrap()[0].name, "lifeboat");
            }
            "Kustomization" => {}
            other => panic!("{what}: unexpected kind {other}"),
        }
    }
    cronjobs
}

fn assert_hardened(cj: &CronJob) {
    let spec = cj.spec.as_ref().unwrap();
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    assert!(spec.starting_deadline_seconds.is_some());
    let job = spec.job_template.spec.as_ref().unwrap();
    assert!(job.active_deadline_seconds.is_some() && job.backoff_limit.is_some());
    let pod = job.template.spec.as_ref().unwrap();
    assert_eq!(pod.security_context.as_ref().unwrap().run_as_non_root, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("lifeboat"));
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let res = c.resources.as_ref().unwrap();
    assert!(res.requests.is_some() && res.limits.is_some());
    let args = c.args.as_ref().unwrap();
    assert_eq!(args[0], "run");
    // Secrets come from the Secret, never inline.
    for e in c.env.as_ref().unwrap() {
        assert!(e.value.is_none() || e.name == "LIFEBOAT_WRITE_KEY_FILE", "{e:?}");
    }
}

#[test]
fn rendered_manifests_parse_and_are_hardened() {
    let out = run(&[
        "deploy",
        "render",
        "--policy",
        "policies/production.toml",
        "--service-account-annotation",
        "eks.amazonaws.com/role-arn=arn:aws:iam::1:role/x",
    ]);
    let yaml = ok(&out);
    let cjs = check_docs(&yaml, "rendered");
    // Every scheduled job gets one; the unscheduled manual job none.
    let names: Vec<String> = cjs.iter().map(|c| c.metadata.name.clone().unwrap()).collect();
    assert_eq!(
        names,
        ["lifeboat-orders-db", "lifeboat-orders-db-physical", "lifeboat-uploads", "lifeboat-cluster-state"]
    );
    // The cluster-state job reads the API: its ServiceAccount is bound to a read-only ClusterRole.
    assert!(yaml.contains("kind: ClusterRoleBinding") && yaml.contains("lifeboat-read"));
    cjs.iter().for_each(assert_hardened);
    assert!(yaml.contains("eks.amazonaws.com/role-arn"));
    let env =
        cjs[0].spec.as_ref().unwrap().job_template.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0]
            .env
            .clone()
            .unwrap();
    assert!(env.iter().any(|e| e.name == "ORDERS_DATABASE_URL" && e.value_from.is_some()));
}

#[test]
fn checked_in_manifests_parse_and_match_the_renderer() {
    for path in
        ["deploy/base/lifeboat.yaml", "deploy/base/namespace.yaml", "deploy/overlays/example/serviceaccount-irsa.yaml"]
    {
        let text = std::fs::read_to_string(path).unwrap();
        check_docs(&text, path).iter().for_each(assert_hardened);
    }
    // The base is exactly what the renderer makes of the production policy.
    let rendered = ok(&run(&["deploy", "render", "--policy", "deploy/base/policy.toml"]));
    assert_eq!(
        std::fs::read_to_string("deploy/base/lifeboat.yaml").unwrap(),
        rendered,
        "deploy/base is stale: re-render it"
    );
    assert_eq!(
        std::fs::read_to_string("deploy/base/policy.toml").unwrap(),
        std::fs::read_to_string("policies/production.toml").unwrap()
    );
}
