//! Kubernetes export and restore against a test double of the Kubernetes API,
//! driven through the real `kube` client (by the real binary).
//!
//! The double is an HTTP/1.1 server on 127.0.0.1 that serves what a
//! kube-apiserver serves on the same paths: `/version`, discovery documents
//! (`/api`, `/api/v1`, `/apis`, `/apis/GROUP/VERSION` with verbs and scope),
//! lists with `limit`/`continue` pagination (it pages at 7 objects whatever
//! the limit, which a real server may also do) and `labelSelector`, `Status`
//! errors (403 Forbidden, 404 NotFound, 409 AlreadyExists), creates (POST),
//! server-side apply (PATCH application/apply-patch+yaml) and gets. Like a
//! real server it refuses objects in a namespace that does not exist and
//! custom resources whose CRD it has not registered, sets `uid`,
//! `resourceVersion`, `creationTimestamp` and `managedFields`, and bumps the
//! resourceVersion each time it serves a list (a live cluster's churn).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// The API double
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct ResType {
    group: String,
    version: String,
    kind: String,
    plural: String,
    namespaced: bool,
    verbs: Vec<&'static str>,
    forbidden: bool,
}

#[derive(Default)]
struct State {
    types: Vec<ResType>,
    /// (group, plural) -> (namespace, name) -> object
    objects: BTreeMap<(String, String), BTreeMap<(String, String), Value>>,
    /// Every write: (method, kind, namespace, name).
    writes: Vec<(String, String, Option<String>, String)>,
    /// Every request: "METHOD path?query".
    requests: Vec<String>,
    rv: u64,
    uid: u64,
}

const PAGE_MAX: usize = 7;

fn status(code: u16, reason: &str, message: String) -> (u16, Value) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": message, "reason": reason, "code": code}),
    )
}

const ALL: &[&str] = &["create", "delete", "get", "list", "patch", "update", "watch"];

fn rt(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> ResType {
    ResType {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        namespaced,
        verbs: ALL.to_vec(),
        forbidden: false,
    }
}

fn builtin_types() -> Vec<ResType> {
    let mut v = vec![
        rt("", "v1", "Namespace", "namespaces", false),
        rt("", "v1", "ConfigMap", "configmaps", true),
        rt("", "v1", "Secret", "secrets", true),
        rt("", "v1", "ServiceAccount", "serviceaccounts", true),
        rt("", "v1", "Service", "services", true),
        rt("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", true),
        rt("", "v1", "PersistentVolume", "persistentvolumes", false),
        rt("", "v1", "Pod", "pods", true),
        rt("", "v1", "LimitRange", "limitranges", true),
        rt("", "v1", "Event", "events", true),
        rt("", "v1", "Node", "nodes", false),
        rt("apps", "v1", "Deployment", "deployments", true),
        rt("apps", "v1", "ReplicaSet", "replicasets", true),
        rt("rbac.authorization.k8s.io", "v1", "Role", "roles", true),
        rt("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true),
        rt("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false),
        rt("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", false),
    ];
    // Create-only types, as on a real server: not listable, never exported.
    v.push(ResType { verbs: vec!["create"], ..rt("", "v1", "Binding", "bindings", true) });
    v
}

impl State {
    fn find(&self, group: &str, plural: &str) -> Option<ResType> {
        self.types.iter().find(|t| t.group == group && t.plural == plural).cloned()
    }

    fn insert(&mut self, mut obj: Value) {
        let (group, _) = split_api_version(obj["apiVersion"].as_str().unwrap());
        let kind = obj["kind"].as_str().unwrap().to_string();
        let t = self.types.iter().find(|t| t.group == group && t.kind == kind).unwrap().clone();
        self.server_fields(&mut obj);
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        self.objects.entry((t.group.clone(), t.plural.clone())).or_default().insert((ns, name), obj);
    }

    fn server_fields(&mut self, obj: &mut Value) {
        self.rv += 1;
        self.uid += 1;
        let m = obj["metadata"].as_object_mut().unwrap();
        m.insert("uid".into(), json!(format!("00000000-0000-4000-8000-{:012}", self.uid)));
        m.insert("resourceVersion".into(), json!(self.rv.to_string()));
        m.insert("creationTimestamp".into(), json!("2026-11-20T02:00:00Z"));
        m.insert("generation".into(), json!(1));
        m.insert(
            "managedFields".into(),
            json!([{"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                    "time": "2026-11-20T02:00:00Z", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}]),
        );
    }

    fn route(&mut self, method: &str, path: &str, query: &str, body: &[u8]) -> (u16, Value) {
        self.requests.push(format!("{method} {path}?{query}"));
        let q: HashMap<String, String> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let seg: Vec<&str> = path.trim_matches('/').split('/').filter(|s| !s.is_empty()).collect();
        match (method, seg.as_slice()) {
            ("GET", ["version"]) => {
                return (
                    200,
                    json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-double", "gitCommit": "0",
                       "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
                       "compiler": "gc", "platform": "linux/amd64"}),
                );
            }
            ("GET", ["api"]) => {
                return (
                    200,
                    json!({"kind": "APIVersions", "versions": ["v1"],
                       "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}]}),
                );
            }
            ("GET", ["apis"]) => {
                let mut groups: BTreeMap<String, String> = BTreeMap::new();
                for t in &self.types {
                    if !t.group.is_empty() {
                        groups.insert(t.group.clone(), t.version.clone());
                    }
                }
                let groups: Vec<Value> = groups
                    .iter()
                    .map(|(g, v)| {
                        let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                        json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                    })
                    .collect();
                return (200, json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}));
            }
            ("GET", ["api", v]) => return (200, self.resource_list("", v)),
            ("GET", ["apis", g, v]) => return (200, self.resource_list(g, v)),
            _ => {}
        }
        // Resource paths.
        let (group, version, rest) = match seg.as_slice() {
            ["api", v, rest @ ..] => ("", *v, rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => return status(404, "NotFound", "the server could not find the requested resource".into()),
        };
        let (ns, plural, name) = match rest {
            [p] => (None, *p, None),
            ["namespaces", n] => (None, "namespaces", Some(*n)),
            [p, n] => (None, *p, Some(*n)),
            ["namespaces", ns, p] => (Some(*ns), *p, None),
            ["namespaces", ns, p, n] => (Some(*ns), *p, Some(*n)),
            _ => return status(404, "NotFound", "the server could not find the requested resource".into()),
        };
        let Some(t) = self.find(group, plural).filter(|t| t.version == version) else {
            return status(404, "NotFound", "the server could not find the requested resource".into());
        };
        let gr = if group.is_empty() { plural.to_string() } else { format!("{plural}.{group}") };
        match (method, name) {
            ("GET", None) => {
                if t.forbidden {
                    return status(
                        403,
                        "Forbidden",
                        format!(
                            "{plural} is forbidden: User \"system:serviceaccount:lifeboat:lifeboat\" cannot list resource \"{plural}\" in API group \"{group}\" at the cluster scope"
                        ),
                    );
                }
                self.list(&t, ns, &q)
            }
            ("GET", Some(n)) => {
                let key = (ns.unwrap_or_default().to_string(), n.to_string());
                let Some(obj) =
                    self.objects.get_mut(&(t.group.clone(), t.plural.clone())).and_then(|m| m.get_mut(&key))
                else {
                    return status(404, "NotFound", format!("{gr} \"{n}\" not found"));
                };
                if t.kind == "CustomResourceDefinition" {
                    // Established from the first read after creation: clients must wait for it.
                    obj["status"] = json!({"conditions": [{"type": "Established", "status": "True"},
                                                          {"type": "NamesAccepted", "status": "True"}]});
                }
                (200, obj.clone())
            }
            ("POST", None) => self.write(&t, ns, None, body, "POST"),
            ("PATCH", Some(n)) => {
                if !q.contains_key("fieldManager") {
                    return status(422, "Invalid", "fieldManager is required for apply patch".into());
                }
                self.write(&t, ns, Some(n), body, "PATCH")
            }
            _ => status(405, "MethodNotAllowed", "the server does not allow this method".into()),
        }
    }

    fn resource_list(&self, group: &str, version: &str) -> Value {
        let resources: Vec<Value> = self
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .flat_map(|t| {
                let mut v =
                    vec![json!({"name": t.plural, "singularName": t.kind.to_lowercase(), "namespaced": t.namespaced,
                                   "kind": t.kind, "verbs": t.verbs})];
                if t.kind == "Deployment" || t.kind == "CustomResourceDefinition" {
                    v.push(
                        json!({"name": format!("{}/status", t.plural), "singularName": "", "namespaced": t.namespaced,
                                  "kind": t.kind, "verbs": ["get", "patch", "update"]}),
                    );
                }
                v
            })
            .collect();
        let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
    }

    fn list(&mut self, t: &ResType, ns: Option<&str>, q: &HashMap<String, String>) -> (u16, Value) {
        self.rv += 1;
        let rv = self.rv;
        let selector: Vec<(String, String)> = q
            .get("labelSelector")
            .map(|s| {
                s.split(',').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
            })
            .unwrap_or_default();
        let all: Vec<Value> = self
            .objects
            .get(&(t.group.clone(), t.plural.clone()))
            .map(|m| {
                m.iter()
                    .filter(|((n, _), _)| ns.is_none_or(|want| want == n))
                    .filter(|(_, o)| selector.iter().all(|(k, v)| o["metadata"]["labels"][k].as_str() == Some(v)))
                    .map(|(_, o)| o.clone())
                    .collect()
            })
            .unwrap_or_default();
        let start: usize = q.get("continue").map(|c| c.parse().unwrap()).unwrap_or(0);
        let limit: usize = q.get("limit").map(|l| l.parse().unwrap()).unwrap_or(usize::MAX).min(PAGE_MAX);
        let end = (start + limit).min(all.len());
        let builtin = !t.group.contains('.') || t.group.ends_with(".k8s.io");
        let items: Vec<Value> = all[start..end]
            .iter()
            .map(|o| {
                let mut o = o.clone();
                o["metadata"]["resourceVersion"] = json!(rv.to_string());
                o["metadata"]["managedFields"][0]["time"] = json!(format!("2026-11-20T02:{:02}:00Z", rv % 60));
                if builtin {
                    let m = o.as_object_mut().unwrap();
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                o
            })
            .collect();
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if end < all.len() {
            meta["continue"] = json!(end.to_string());
            meta["remainingItemCount"] = json!(all.len() - end);
        }
        let av = if t.group.is_empty() { t.version.clone() } else { format!("{}/{}", t.group, t.version) };
        (200, json!({"kind": format!("{}List", t.kind), "apiVersion": av, "metadata": meta, "items": items}))
    }

    fn write(&mut self, t: &ResType, ns: Option<&str>, name: Option<&str>, body: &[u8], method: &str) -> (u16, Value) {
        let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
            return status(400, "BadRequest", "the body is not JSON".into());
        };
        let name = name.map(str::to_string).or_else(|| obj["metadata"]["name"].as_str().map(str::to_string));
        let Some(name) = name else { return status(422, "Invalid", "metadata.name: Required value".into()) };
        if obj["kind"].as_str() != Some(&t.kind) {
            return status(400, "BadRequest", format!("kind {} does not match the path", obj["kind"]));
        }
        let ns = if t.namespaced {
            let Some(ns) = ns else { return status(404, "NotFound", "namespaced resource needs a namespace".into()) };
            if obj["metadata"]["namespace"].as_str().is_some_and(|n| n != ns) {
                return status(400, "BadRequest", "the namespace of the object does not match the path".into());
            }
            if !self
                .objects
                .get(&(String::new(), "namespaces".into()))
                .is_some_and(|m| m.contains_key(&(String::new(), ns.to_string())))
            {
                return status(404, "NotFound", format!("namespaces \"{ns}\" not found"));
            }
            obj["metadata"]["namespace"] = json!(ns);
            ns.to_string()
        } else {
            String::new()
        };
        for f in ["uid", "resourceVersion"] {
            if obj["metadata"].get(f).is_some() && method == "POST" {
                return status(400, "BadRequest", format!("metadata.{f} must not be set on create"));
            }
        }
        let key = (ns.clone(), name.clone());
        let exists = self.objects.get(&(t.group.clone(), t.plural.clone())).is_some_and(|m| m.contains_key(&key));
        if exists && method == "POST" {
            let gr = if t.group.is_empty() { t.plural.clone() } else { format!("{}.{}", t.plural, t.group) };
            return status(409, "AlreadyExists", format!("{gr} \"{name}\" already exists"));
        }
        self.writes.push((
            method.into(),
            t.kind.clone(),
            if t.namespaced { Some(ns.clone()) } else { None },
            name.clone(),
        ));
        self.server_fields(&mut obj);
        if t.kind == "CustomResourceDefinition" {
            let spec = &obj["spec"];
            let version =
                spec["versions"].as_array().and_then(|v| v.first()).map(|v| v["name"].as_str().unwrap().to_string());
            let new = rt(
                spec["group"].as_str().unwrap_or_default(),
                &version.unwrap_or_default(),
                spec["names"]["kind"].as_str().unwrap_or_default(),
                spec["names"]["plural"].as_str().unwrap_or_default(),
                spec["scope"] == "Namespaced",
            );
            if self.find(&new.group, &new.plural).is_none() {
                self.types.push(new);
            }
            obj["status"] = json!({"conditions": [{"type": "Established", "status": "False"}]});
        }
        self.objects.entry((t.group.clone(), t.plural.clone())).or_default().insert(key, obj.clone());
        (if exists { 200 } else { 201 }, obj)
    }
}

fn split_api_version(av: &str) -> (String, String) {
    match av.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), av.to_string()),
    }
}

/// A running double on 127.0.0.1; stops with the test.
struct Double {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _rt: tokio::runtime::Runtime,
}

impl Double {
    fn start(state: State) -> Double {
        use http_body_util::{BodyExt, Full};
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let state = Arc::new(Mutex::new(state));
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let st = state.clone();
        rt.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        async move {
                            let method = req.method().to_string();
                            let path = req.uri().path().to_string();
                            let query = req.uri().query().unwrap_or_default().to_string();
                            let ctype = req
                                .headers()
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let (code, v) = if method == "PATCH" && ctype != "application/apply-patch+yaml" {
                                status(415, "UnsupportedMediaType", format!("unsupported patch type {ctype}"))
                            } else {
                                st.lock().unwrap().route(&method, &path, &query, &body)
                            };
                            Ok::<_, Infallible>(
                                hyper::Response::builder()
                                    .status(code)
                                    .header("content-type", "application/json")
                                    .body(Full::new(bytes::Bytes::from(v.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await;
                });
            }
        });
        Double { addr, state, _rt: rt }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every stored object of a kind, by (namespace, name).
    fn objects_of(&self, group: &str, plural: &str) -> BTreeMap<(String, String), Value> {
        self.state.lock().unwrap().objects.get(&(group.to_string(), plural.to_string())).cloned().unwrap_or_default()
    }

    fn all_objects(&self) -> Vec<Value> {
        self.state.lock().unwrap().objects.values().flat_map(|m| m.values().cloned()).collect()
    }

    fn writes(&self) -> Vec<(String, String, Option<String>, String)> {
        self.state.lock().unwrap().writes.clone()
    }
}

/// An empty cluster: built-in types, the default namespaces.
fn empty_cluster() -> State {
    let mut s = State { types: builtin_types(), ..Default::default() };
    for ns in ["default", "kube-system"] {
        s.insert(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}));
    }
    s
}

const SECRET_VALUE: &str = "czNjcjN0LXBhc3N3b3JkLXZhbHVl"; // base64 of a password

/// A small production-like cluster.
fn source_cluster(forbid_limitranges: bool) -> State {
    let mut s = empty_cluster();
    for t in s.types.iter_mut() {
        if t.plural == "limitranges" {
            t.forbidden = forbid_limitranges;
        }
    }
    s.types.push(rt("example.com", "v1", "Widget", "widgets", true));
    for ns in ["production", "staging", "other"] {
        s.insert(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns, "env": ns}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}));
    }
    s.insert(json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
                 "versions": [{"name": "v1", "served": true, "storage": true,
                               "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]},
        "status": {"conditions": [{"type": "Established", "status": "True"}], "acceptedNames": {"kind": "Widget", "plural": "widgets"}, "storedVersions": ["v1"]}}));
    s.insert(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "widget-viewer"},
        "rules": [{"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get", "list"]}]}));
    s.insert(json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv-0001"},
        "spec": {"capacity": {"storage": "10Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/srv/pv1"},
                 "claimRef": {"kind": "PersistentVolumeClaim", "namespace": "production", "name": "data", "uid": "abc", "resourceVersion": "9"}},
        "status": {"phase": "Bound"}}));
    s.insert(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}, "spec": {}}));
    for (ns, n) in [("production", 40), ("staging", 5), ("other", 3), ("kube-system", 2)] {
        for i in 0..n {
            let data: BTreeMap<String, String> =
                (0..20).map(|k| (format!("key-{k:02}"), format!("value {i} {k} {}", "x".repeat(40)))).collect();
            s.insert(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": format!("settings-{i:03}"), "namespace": ns, "labels": {"app": "web"}},
                "data": data}));
        }
        s.insert(json!({"apiVersion": "v1", "kind": "Event", "metadata": {"name": "ev1", "namespace": ns},
                        "involvedObject": {"kind": "Pod"}, "reason": "Started"}));
    }
    for ns in ["production", "staging"] {
        s.insert(json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": "db-credentials", "namespace": ns}, "data": {"password": SECRET_VALUE}}));
        s.insert(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": ns}}));
        s.insert(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": "app-reader", "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}));
        s.insert(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "app-reader", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "app-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": ns}]}));
        s.insert(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}],
                     "clusterIP": "10.96.0.12", "clusterIPs": ["10.96.0.12"], "type": "ClusterIP"},
            "status": {"loadBalancer": {}}}));
        s.insert(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data", "namespace": ns,
                "annotations": {"pv.kubernetes.io/bind-completed": "yes", "team": "storage"}},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "10Gi"}}, "volumeName": "pv-0001"},
            "status": {"phase": "Bound"}}));
        s.insert(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns, "labels": {"app": "web"}},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"serviceAccountName": "app", "containers": [{"name": "web", "image": "nginx:1.27",
                                           "envFrom": [{"secretRef": {"name": "db-credentials"}}]}]}}},
            "status": {"replicas": 2, "readyReplicas": 2}}));
        let owner =
            json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u-dep", "controller": true}]);
        s.insert(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-5d8f9", "namespace": ns, "ownerReferences": owner},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}}}}));
        let rs_owner = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f9", "uid": "u-rs", "controller": true}]);
        s.insert(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-5d8f9-abcde", "namespace": ns, "ownerReferences": rs_owner},
            "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "nginx:1.27"}]}, "status": {"phase": "Running"}}));
        s.insert(
            json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "gear", "namespace": ns},
            "spec": {"size": 3, "color": "blue"}, "status": {"observed": true}}),
        );
        s.insert(json!({"apiVersion": "v1", "kind": "LimitRange", "metadata": {"name": "limits", "namespace": ns},
            "spec": {"limits": [{"type": "Container", "default": {"cpu": "500m"}}]}}));
    }
    s
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn kubeconfig(dir: &Path, clusters: &[(&str, String)]) -> PathBuf {
    let mut y = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (n, url) in clusters {
        y += &format!("- name: {n}\n  cluster:\n    server: {url}\n");
    }
    y += "users:\n- name: tester\n  user:\n    token: test-token\ncontexts:\n";
    for (n, _) in clusters {
        y += &format!("- name: {n}\n  context:\n    cluster: {n}\n    user: tester\n");
    }
    y += &format!("current-context: {}\n", clusters[0].0);
    let p = dir.join("kubeconfig");
    std::fs::write(&p, y).unwrap();
    p
}

fn policy(f: &Fixture, kubeconfig: &Path, extra: &str) -> PathBuf {
    let p = f.dir.path().join("policy.toml");
    std::fs::write(
        &p,
        format!(
            "[[repository]]\nname = \"local\"\nurl = \"{}\"\n\n[[job]]\nname = \"cluster-state\"\nkind = \"kubernetes\"\nkubeconfig = \"{}\"\ncontext = \"src\"\n{extra}\n",
            f.repo,
            kubeconfig.display()
        ),
    )
    .unwrap();
    p
}

fn backup_json(f: &Fixture, policy: &Path) -> (Value, String) {
    let out = run(&["--json", "backup", "--policy", policy.to_str().unwrap(), "cluster-state", "--write-key", f.wk()]);
    let so = ok(&out);
    (serde_json::from_str(&so).unwrap(), stderr(&out))
}

fn manifest_source(f: &Fixture, id: &str) -> Value {
    let out = run(&["--json", "snapshots", "--repo", &f.repo, "--identity", f.id()]);
    let list: Vec<Value> = serde_json::from_str(&ok(&out)).unwrap();
    list.into_iter().find(|m| m["id"] == id).unwrap()["source"].clone()
}

fn exported(f: &Fixture, id: &str) -> Vec<String> {
    let data = f.restore(id);
    String::from_utf8(data).unwrap().lines().map(str::to_string).collect()
}

/// What the export must make of a source object (written independently of the library).
fn expected_export(mut o: Value) -> Option<Value> {
    if o["metadata"]["ownerReferences"].as_array().is_some_and(|r| r.iter().any(|r| r["controller"] == true)) {
        return None;
    }
    let m = o["metadata"].as_object_mut().unwrap();
    for f in ["uid", "resourceVersion", "managedFields", "creationTimestamp", "generation"] {
        m.remove(f);
    }
    if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
        a.remove("pv.kubernetes.io/bind-completed");
    }
    let kind = o["kind"].as_str().unwrap().to_string();
    let obj = o.as_object_mut().unwrap();
    obj.remove("status");
    if kind == "Service" {
        let s = obj["spec"].as_object_mut().unwrap();
        s.remove("clusterIP");
        s.remove("clusterIPs");
    }
    if kind == "PersistentVolumeClaim" {
        obj["spec"].as_object_mut().unwrap().remove("volumeName");
    }
    if kind == "PersistentVolume" {
        let c = obj["spec"]["claimRef"].as_object_mut().unwrap();
        c.remove("uid");
        c.remove("resourceVersion");
    }
    Some(o)
}

fn key_of(o: &Value) -> (String, String, String, String) {
    let (g, _) = split_api_version(o["apiVersion"].as_str().unwrap());
    (
        g,
        o["kind"].as_str().unwrap().to_string(),
        o["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
        o["metadata"]["name"].as_str().unwrap().to_string(),
    )
}

/// Sorted-key, compact JSON (independent of the library's).
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let parts: Vec<String> =
                keys.iter().map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&m[*k]))).collect();
            format!("{{{}}}", parts.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical).collect::<Vec<_>>().join(",")),
        o => o.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn export_then_restore_into_empty_cluster_with_namespace_map_in_dependency_order() {
    let src = Double::start(source_cluster(false));
    let dst = Double::start(empty_cluster());
    let f = Fixture::local();
    let kc = kubeconfig(f.dir.path(), &[("src", src.url()), ("dst", dst.url())]);
    let pol = policy(&f, &kc, "namespaces = [\"production\", \"staging\"]");
    let (b, err) = backup_json(&f, &pol);
    let id = b["id"].as_str().unwrap().to_string();
    assert!(!err.contains(SECRET_VALUE), "secret data in the log: {err}");

    // Lists were paginated with `continue`.
    let reqs = src.state.lock().unwrap().requests.clone();
    assert!(
        reqs.iter().any(|r| r.contains("/namespaces/production/configmaps") && r.contains("continue=")),
        "{reqs:?}"
    );

    // The export: canonical, stably ordered, stripped, owned objects left out, namespaces filtered.
    let lines = exported(&f, &id);
    let docs: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (l, d) in lines.iter().zip(&docs) {
        assert_eq!(l, &canonical(d), "not canonical JSON");
    }
    let keys: Vec<_> = docs.iter().map(key_of).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "export order is not group/kind/namespace/name");
    let expected: BTreeMap<_, _> = src
        .all_objects()
        .into_iter()
        .filter(|o| {
            let k = key_of(o);
            let ns_ok = k.2.is_empty() || ["production", "staging"].contains(&k.2.as_str());
            let ns_obj_ok = k.1 != "Namespace" || ["production", "staging"].contains(&k.3.as_str());
            ns_ok && ns_obj_ok && !["Event", "Node"].contains(&k.1.as_str())
        })
        .filter_map(expected_export)
        .map(|o| (key_of(&o), o))
        .collect();
    let got: BTreeMap<_, _> = docs.iter().map(|o| (key_of(o), o.clone())).collect();
    assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>());
    assert_eq!(got, expected);
    assert!(got.keys().any(|k| k.1 == "Widget"), "custom resources are exported");
    assert!(got.keys().any(|k| k.1 == "ClusterRole"), "cluster-scoped objects are exported");
    assert!(!got.keys().any(|k| k.1 == "ReplicaSet" || k.1 == "Pod"), "owned objects are left out");
    assert_eq!(got.keys().filter(|k| k.1 == "ConfigMap" && k.2 == "production").count(), 40);

    // Manifest metadata.
    let src_meta = manifest_source(&f, &id);
    assert_eq!(src_meta["server_version"], "v1.32.0-double");
    assert_eq!(src_meta["counts"]["configmaps"]["production"], 40);
    assert_eq!(src_meta["counts"]["widgets.example.com"]["staging"], 1);
    assert_eq!(src_meta["objects"], docs.len());
    assert_eq!(src_meta["owned_objects_left_out"], 4);

    // Restore into the empty double, production renamed.
    let out = run(&[
        "restore",
        "--repo",
        &f.repo,
        "--identity",
        f.id(),
        &id,
        "--to",
        "kube:dst",
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--namespace-map",
        "production=prod-restored",
    ]);
    ok(&out);
    assert!(!stderr(&out).contains(SECRET_VALUE));

    // What arrived equals the export, namespace mapped, minus what the server sets.
    let mut arrived: BTreeMap<_, _> = BTreeMap::new();
    for mut o in dst.all_objects() {
        let k = key_of(&o);
        if k.1 == "Namespace" && (k.3 == "default" || k.3 == "kube-system") {
            continue;
        }
        let m = o["metadata"].as_object_mut().unwrap();
        for f in ["uid", "resourceVersion", "managedFields", "creationTimestamp", "generation"] {
            m.remove(f);
        }
        if k.1 == "CustomResourceDefinition" {
            o.as_object_mut().unwrap().remove("status");
        }
        arrived.insert(key_of(&o), o);
    }
    let mut want = BTreeMap::new();
    for (_, mut o) in expected {
        let ns_field = if o["kind"] == "Namespace" { "name" } else { "namespace" };
        if o["metadata"][ns_field] == "production" {
            o["metadata"][ns_field] = json!("prod-restored");
        }
        if o["kind"] == "RoleBinding" {
            for s in o["subjects"].as_array_mut().unwrap() {
                if s["namespace"] == "production" {
                    s["namespace"] = json!("prod-restored");
                }
            }
        }
        want.insert(key_of(&o), o);
    }
    assert_eq!(arrived.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    assert_eq!(arrived, want);

    // Dependency order of the creates.
    let rank = |kind: &str| match kind {
        "CustomResourceDefinition" => 0,
        "Namespace" | "LimitRange" => 1,
        "ServiceAccount" => 2,
        "ClusterRole" | "Role" | "RoleBinding" => 3,
        "ConfigMap" | "Secret" => 4,
        "PersistentVolume" | "PersistentVolumeClaim" => 5,
        "Service" => 6,
        "Deployment" => 7,
        _ => 8,
    };
    let writes = dst.writes();
    assert!(writes.iter().all(|w| w.0 == "POST"));
    let ranks: Vec<u32> = writes.iter().map(|w| rank(&w.1)).collect();
    let mut sorted = ranks.clone();
    sorted.sort();
    assert_eq!(ranks, sorted, "creates out of dependency order: {writes:?}");
    let mut kinds: Vec<&str> = writes.iter().map(|w| w.1.as_str()).collect();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition",
            "Namespace",
            "LimitRange",
            "ServiceAccount",
            "ClusterRole",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Secret",
            "PersistentVolume",
            "PersistentVolumeClaim",
            "Service",
            "Deployment",
            "Widget"
        ]
    );
    // Roles before the bindings that reference them.
    let pos = |k: &str| writes.iter().position(|w| w.1 == k).unwrap();
    assert!(pos("Role") < pos("RoleBinding"));

    // A second restore with the default policy leaves existing objects alone;
    // --existing update server-side-applies them.
    let before = dst.writes().len();
    let args = |extra: &[&str]| {
        let mut v: Vec<String> =
            ["restore", "--repo", &f.repo, "--identity", f.id(), &id, "--to", "kube:dst", "--kubeconfig"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        v.push(kc.display().to_string());
        v.extend(["--namespace-map".into(), "production=prod-restored".into()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a = args(&[]);
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&out);
    assert!(stderr(&out).contains("0 created"), "{}", stderr(&out));
    assert_eq!(dst.writes().len(), before, "skip must not write");
    let a = args(&["--existing", "update", "--include", "configmaps", "--include", "ns:staging"]);
    let out = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&out);
    let patched: Vec<_> = dst.writes()[before..].to_vec();
    assert_eq!(patched.len(), 5, "{patched:?}");
    assert!(patched.iter().all(|w| w.0 == "PATCH" && w.1 == "ConfigMap" && w.2.as_deref() == Some("staging")));
}

#[test]
fn dry_run_prints_the_plan_and_to_dir_writes_yaml_for_kubectl() {
    let src = Double::start(source_cluster(false));
    let dst = Double::start(empty_cluster());
    let f = Fixture::local();
    let kc = kubeconfig(f.dir.path(), &[("src", src.url()), ("dst", dst.url())]);
    let pol = policy(&f, &kc, "namespaces = [\"staging\"]\nexclude_resources = [\"secrets\"]");
    let (b, _) = backup_json(&f, &pol);
    let id = b["id"].as_str().unwrap();

    let out = run(&[
        "restore",
        "--repo",
        &f.repo,
        "--identity",
        f.id(),
        id,
        "--to",
        "kube:dst",
        "--kubeconfig",
        kc.to_str().unwrap(),
        "--dry-run",
    ]);
    let plan = ok(&out);
    assert!(dst.writes().is_empty(), "dry run wrote to the cluster");
    let lines: Vec<&str> = plan.lines().skip(1).collect();
    assert!(lines[0].contains("CustomResourceDefinition widgets.example.com"), "{plan}");
    assert!(lines[1].contains("Namespace staging"), "{plan}");
    assert!(lines.last().unwrap().contains("Widget staging/gear"), "{plan}");
    assert!(!plan.contains("Secret"), "secrets were excluded from the export: {plan}");

    // lifeboat verify: every object parses and the plan covers what was exported.
    let v: Value = serde_json::from_str(&ok(&run(&[
        "--json",
        "verify",
        "--policy",
        pol.to_str().unwrap(),
        "cluster-state",
        "--identity",
        f.id(),
    ])))
    .unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    let checks = v["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "plan" && c["detail"].as_str().unwrap().contains("as many as were exported")),
        "{v:#}"
    );

    let dir = f.dir.path().join("yaml");
    let out = run(&["restore", "--repo", &f.repo, "--identity", f.id(), id, "--to-dir", dir.to_str().unwrap()]);
    ok(&out);
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let exported: Vec<Value> = exported(&f, id).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(files.len(), exported.len());
    // The files, in name order (kubectl's order), follow the plan, and each holds one exported object.
    let mut from_yaml = Vec::new();
    for p in &files {
        let v: Value = serde_yaml::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        from_yaml.push(v);
    }
    let kinds: Vec<String> = from_yaml.iter().map(|v| v["kind"].as_str().unwrap().to_string()).collect();
    assert_eq!(kinds.first().unwrap(), "CustomResourceDefinition");
    assert_eq!(kinds[1], "Namespace");
    assert_eq!(kinds.last().unwrap(), "Widget");
    let dep: k8s_openapi::api::apps::v1::Deployment =
        serde_json::from_value(from_yaml.iter().find(|v| v["kind"] == "Deployment").unwrap().clone()).unwrap();
    assert_eq!(dep.spec.unwrap().replicas, Some(2));
    let mut a: Vec<String> = from_yaml.iter().map(canonical).collect();
    let mut b: Vec<String> = exported.iter().map(canonical).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
}

#[test]
fn second_export_of_unchanged_cluster_stores_under_one_percent_new_bytes() {
    let src = Double::start(source_cluster(false));
    let f = Fixture::local();
    let kc = kubeconfig(f.dir.path(), &[("src", src.url())]);
    let pol = policy(&f, &kc, "");
    let (first, _) = backup_json(&f, &pol);
    let (second, _) = backup_json(&f, &pol);
    let s1 = &first["stats"];
    let s2 = &second["stats"];
    let read = s2["bytes_read"].as_u64().unwrap();
    let new = s2["bytes_new_raw"].as_u64().unwrap();
    assert!(read > 20_000, "{s2}");
    assert_eq!(s1["bytes_read"], s2["bytes_read"]);
    let pct = 100.0 * new as f64 / read as f64;
    eprintln!("second export: {read} bytes read, {new} new ({pct:.3}%)");
    assert!(pct < 1.0, "second export stored {pct:.2}% new bytes");
    // The server-owned fields did change between the two exports (the double bumps resourceVersion).
    let reqs = src.state.lock().unwrap().rv;
    assert!(reqs > 10);
}

#[test]
fn forbidden_resource_type_is_skipped_with_a_warning_naming_it() {
    let src = Double::start(source_cluster(true));
    let f = Fixture::local();
    let kc = kubeconfig(f.dir.path(), &[("src", src.url())]);
    let pol = policy(&f, &kc, "namespaces = [\"production\"]");
    let (b, err) = backup_json(&f, &pol);
    eprintln!("--- forbidden:\n{err}");
    assert!(err.contains("limitranges") && err.contains("forbidden"), "{err}");
    let id = b["id"].as_str().unwrap();
    let meta = manifest_source(&f, id);
    let skipped = meta["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0]["resource"], "limitranges");
    assert!(skipped[0]["reason"].as_str().unwrap().contains("403"));
    // The rest was exported.
    let docs: Vec<Value> = exported(&f, id).iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(docs.iter().any(|d| d["kind"] == "Deployment"));
    assert!(!docs.iter().any(|d| d["kind"] == "LimitRange"));
    assert_eq!(docs.iter().filter(|d| d["kind"] == "ConfigMap").count(), 40);
}

#[test]
fn unreachable_api_server_fails_without_a_snapshot() {
    let f = Fixture::local();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let kc = kubeconfig(f.dir.path(), &[("src", format!("http://127.0.0.1:{port}"))]);
    let pol = policy(&f, &kc, "");
    let out = run(&["backup", "--policy", pol.to_str().unwrap(), "cluster-state", "--write-key", f.wk()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    eprintln!("--- unreachable:\n{err}");
    assert!(err.contains(&format!("cannot reach the Kubernetes API server at http://127.0.0.1:{port}")), "{err}");
    assert!(err.contains("no snapshot was written"), "{err}");
    let list = ok(&run(&["--json", "snapshots", "--repo", &f.repo, "--identity", f.id()]));
    assert_eq!(serde_json::from_str::<Vec<Value>>(&list).unwrap().len(), 0);
}

/// A snapshot whose stream was damaged by hand: one line is not JSON, one
/// Deployment has a string where a number belongs. Restore reports each,
/// restores the rest, and exits 1.
#[test]
fn malformed_object_in_snapshot_fails_that_object_and_the_rest_is_restored() {
    let f = Fixture::local();
    let good_ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "staging"}});
    let good_cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings", "namespace": "staging"}, "data": {"a": "1"}});
    let good_secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "staging"}, "data": {"password": SECRET_VALUE}});
    let bad_dep = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "broken", "namespace": "staging"},
        "spec": {"replicas": "three", "selector": {}, "template": {}}});
    let stream = format!(
        "{}\n{{\"apiVersion\": \"v1\", \"kind\": \"ConfigMap\", \"metadata\": {{\"name\": \"trunc\n{}\n{}\n{}\n",
        canonical(&good_cm),
        canonical(&bad_dep),
        canonical(&good_ns),
        canonical(&good_secret)
    );
    let id = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let url: lifeboat::storage::RepoUrl = f.repo.parse().unwrap();
            let repo = lifeboat::repo::Repository::open(&url).await.unwrap();
            let cred = lifeboat::crypto::WriteCredential::from_file(&f.write_key).unwrap();
            let keys = repo.unlock_write(&cred).unwrap();
            let opts = lifeboat::pipeline::BackupOptions {
                name: "cluster-state".into(),
                kind: "kubernetes".into(),
                tags: vec![],
            };
            let mut s = lifeboat::pipeline::BackupSession::start(&repo, &keys, opts).await.unwrap();
            s.add_stream(lifeboat::source::kubernetes::STREAM, std::io::Cursor::new(stream.into_bytes()))
                .await
                .unwrap();
            s.finish(Ok(json!({"format": "lifeboat-kubernetes-v1"}))).await.unwrap().id
        })
    };
    let dst = Double::start(empty_cluster());
    let kc = kubeconfig(f.dir.path(), &[("dst", dst.url())]);
    let out = run(&[
        "restore",
        "--repo",
        &f.repo,
        "--identity",
        f.id(),
        &id,
        "--to",
        "kube",
        "--kubeconfig",
        kc.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    eprintln!("--- malformed:\n{err}");
    assert!(!err.contains(SECRET_VALUE));
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error: ") && l.contains("line ")).collect();
    assert_eq!(errors.len(), 2, "{err}");
    assert!(errors[0].contains("line 2") && errors[0].contains("not a JSON object"), "{err}");
    assert!(errors[1].contains("Deployment staging/broken") && errors[1].contains("line 3"), "{err}");
    assert!(err.contains("2 object(s) could not be restored"), "{err}");
    // The rest arrived.
    assert!(dst.objects_of("", "namespaces").contains_key(&(String::new(), "staging".into())));
    let cm = dst.objects_of("", "configmaps");
    assert_eq!(cm[&("staging".to_string(), "settings".to_string())]["data"], json!({"a": "1"}));
    let sec = dst.objects_of("", "secrets");
    assert_eq!(sec[&("staging".to_string(), "s".to_string())]["data"]["password"], SECRET_VALUE);
    assert!(dst.objects_of("apps", "deployments").is_empty());

    // lifeboat verify fails on the same snapshot and names the objects.
    let pol = policy(&f, &kc, "");
    let out = run(&["verify", "--policy", pol.to_str().unwrap(), "cluster-state", "--identity", f.id()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("[FAIL] parse: 2 object(s) do not parse") && text.contains("Deployment staging/broken"),
        "{text}"
    );
    assert!(!text.contains(SECRET_VALUE));
}
